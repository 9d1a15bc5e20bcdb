use std::{net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;

use tokio::io::{AsyncRead, AsyncWrite};
use tower::Service;
use tower_layer::Layer;

use super::{
    ResponseFuture, TimedIo, TimeoutError,
    activity::{DEFAULT_MIN_SEND_RATE, Deadlines, IdleLimit, Lifetime, MinRate, RequestLimit},
    watch,
};
use crate::{
    BoxError, ConfigError, Conn,
    counter::Counter,
    deadline::Scaler,
    metrics::{EVICTIONS, TIMEOUTS},
    striped::Striped,
    throttle::LogThrottle,
};

const DEFAULT_LIFETIME_GRACE: Duration = Duration::from_secs(30);

/// Closes connections that outlive their deadlines. See the [module
/// documentation](super).
///
/// Clones share their counters: keep a clone to read [`stats`](Self::stats).
#[derive(Debug, Clone)]
pub struct TimeoutLayer {
    /// The deadlines new connections get, replaced by a reload; each connection keeps
    /// the ones it started with.
    shared: Arc<ArcSwap<Striped<Shared>>>,
}

/// Builds a [`TimeoutLayer`]; every deadline is off until set.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct TimeoutBuilder {
    first_byte: Option<Duration>,
    idle: Option<Duration>,
    min_send_rate: Option<u64>,
    request: Option<Duration>,
    min_rate: Option<(u64, Duration)>,
    lifetime: Option<Duration>,
    lifetime_grace: Option<Duration>,
    scaler: Scaler,
}

/// How many connections each deadline has closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TimeoutStats {
    /// Closed for sending nothing within the first-byte timeout.
    pub first_byte: u64,
    /// Closed for being idle.
    pub idle: u64,
    /// Closed for a request not complete in time.
    pub request: u64,
    /// Asked to close gracefully at the end of their lifetime.
    pub lifetime_wound_down: u64,
    /// Cut after their lifetime's grace period.
    pub lifetime_cut: u64,
}

/// One line: `timed out 7 (first byte 4, idle 2, request 1, lifetime 0), lifetime
/// reached 3`.
impl std::fmt::Display for TimeoutStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "timed out {} (first byte {}, idle {}, request {}, lifetime {}), lifetime reached {}",
            self.first_byte + self.idle + self.request + self.lifetime_cut,
            self.first_byte,
            self.idle,
            self.request,
            self.lifetime_cut,
            self.lifetime_wound_down
        )
    }
}

impl TimeoutLayer {
    /// A layer with no deadline yet.
    pub fn builder() -> TimeoutBuilder {
        TimeoutBuilder::default()
    }

    /// Counters, read without locking.
    pub fn stats(&self) -> TimeoutStats {
        let shared = self.shared.load();
        let stats = &shared.stats;
        TimeoutStats {
            first_byte: stats.first_byte.get(),
            idle: stats.idle.get(),
            request: stats.request.get(),
            lifetime_wound_down: stats.lifetime_wound_down.get(),
            lifetime_cut: stats.lifetime_cut.get(),
        }
    }

    /// Replaces the deadlines of this layer and its clones with `timeouts`' for new
    /// connections, for a reload without a restart; live connections keep theirs. The
    /// counters and the overload manager stay (the builder's `overload` is not read).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_bouncer::timeout::TimeoutLayer;
    ///
    /// let layer = TimeoutLayer::builder().idle(Duration::from_secs(60)).build().unwrap();
    /// layer
    ///     .set_deadlines(TimeoutLayer::builder().idle(Duration::from_secs(30)))
    ///     .unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// What [`build`](TimeoutBuilder::build) refuses; the deadlines are then unchanged.
    pub fn set_deadlines(&self, timeouts: TimeoutBuilder) -> Result<(), ConfigError> {
        let deadlines = timeouts.deadlines()?;
        self.shared.rcu(|current| {
            Striped::new(Shared {
                deadlines,
                scaler: current.scaler.clone(),
                stats: current.stats.clone(),
                log: current.log.clone(),
            })
        });
        Ok(())
    }
}

impl TimeoutBuilder {
    /// Close a connection that sends nothing within `timeout` of connecting.
    pub fn first_byte(mut self, timeout: Duration) -> Self {
        self.first_byte = Some(timeout);
        self
    }

    /// Close a connection that does nothing useful for `timeout`: no byte read or
    /// written (under the [HTTP adapter](crate::http), which says when it is busy: no
    /// request open, whatever else moves, HTTP/2 PINGs included), or output held back
    /// by a client that takes less than the [minimum send
    /// rate](Self::idle_min_send_rate) over `timeout` (a slow reader). An HTTP/2
    /// connection with no stream open is sent GOAWAY first, and cut a second later if
    /// it has not closed, unless a stream opened as the GOAWAY came is being served.
    pub fn idle(mut self, timeout: Duration) -> Self {
        self.idle = Some(timeout);
        self
    }

    /// While output waits for the client (its receive window is full), the client must
    /// take at least this many bytes a second over each idle period, or the connection
    /// is idle; 256 by default. A server that writes slowly (an event stream) keeps no
    /// output waiting and is not concerned. Needs an idle timeout.
    pub fn idle_min_send_rate(mut self, bytes_per_second: u64) -> Self {
        self.min_send_rate = Some(bytes_per_second);
        self
    }

    /// Close a connection whose request is not complete within `timeout` of its first
    /// byte. The protocol says where requests end with [`RequestTimer`](super::RequestTimer);
    /// under the [HTTP adapter](crate::http), a request is its head and its body until
    /// the handler answers, so an upload is held to it whole unless a
    /// [minimum rate](Self::request_min_rate) extends it. An HTTP/2 upload its client
    /// resets before it is in passes the time it ran past what it earned to the streams
    /// the client opens within `timeout` after: abandoning each upload short of the
    /// timeout and opening the next does not restart the clock (see the
    /// [module](super)).
    pub fn request(mut self, timeout: Duration) -> Self {
        self.request = Some(timeout);
        self
    }

    /// Extends the request timeout by one second for every `bytes_per_second` bytes the
    /// request has brought, up to `max`: a large upload that keeps moving is not cut, a
    /// trickle is (Apache mod_reqtimeout's `MinRate`). Under a protocol that declares
    /// its exchanges (the HTTP adapter), a request earns time only once its exchange is
    /// open, its head in: a head that keeps coming and never ends is held to the request
    /// timeout. On HTTP/2 a stream earns time by its own request data (its DATA frames'
    /// data, not their padding) alone: PINGs, window updates and other streams' frames
    /// sent alongside a trickle earn it nothing. Needs a request timeout.
    pub fn request_min_rate(mut self, bytes_per_second: u64, max: Duration) -> Self {
        self.min_rate = Some((bytes_per_second, max));
        self
    }

    /// Ask a connection older than `lifetime` to close gracefully, and cut it after the
    /// [grace period](Self::lifetime_grace).
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = Some(lifetime);
        self
    }

    /// How long a connection past its lifetime has to finish; 30 s by default.
    pub fn lifetime_grace(mut self, grace: Duration) -> Self {
        self.lifetime_grace = Some(grace);
        self
    }

    /// Shrinks every deadline but the lifetime as `overload`'s pressure rises, and tells
    /// it which connections are idle, for it to evict at a full cap. Without an
    /// [`idle`](Self::idle) timeout it can tell only what the protocol declares: see
    /// [which connections are idle](crate::overload#which-connections-are-idle).
    #[cfg(feature = "overload")]
    pub fn overload(mut self, overload: &crate::overload::Overload) -> Self {
        self.scaler = Scaler::new(overload);
        self
    }

    /// # Errors
    ///
    /// [`ConfigError::Empty`] without any deadline; [`ConfigError::Zero`] for a zero
    /// timeout or rate; [`ConfigError::Inconsistent`] for a minimum rate without the
    /// timeout it belongs to, or a request maximum below the request timeout. Durations
    /// too long to matter (`Duration::MAX`) mean "never".
    pub fn build(self) -> Result<TimeoutLayer, ConfigError> {
        let scaler = self.scaler.clone();
        let deadlines = self.deadlines()?;
        Ok(TimeoutLayer {
            shared: Arc::new(ArcSwap::from_pointee(Striped::new(Shared::with_scaler(
                deadlines, scaler,
            )))),
        })
    }

    /// The deadlines set, checked.
    fn deadlines(self) -> Result<Deadlines, ConfigError> {
        let positive = |value: Option<Duration>, setting| match value {
            Some(Duration::ZERO) => Err(ConfigError::Zero { setting }),
            other => Ok(other),
        };
        let request = match (positive(self.request, "request")?, self.min_rate) {
            (None, Some(_)) => {
                return Err(ConfigError::Inconsistent {
                    reason: "request_min_rate needs a request timeout",
                });
            }
            (None, None) => None,
            (Some(base), None) => Some(RequestLimit {
                base,
                min_rate: None,
            }),
            (Some(base), Some((bytes_per_second, max))) => {
                if bytes_per_second == 0 {
                    return Err(ConfigError::Zero {
                        setting: "request_min_rate",
                    });
                }
                if max < base {
                    return Err(ConfigError::Inconsistent {
                        reason: "the request_min_rate maximum is below the request timeout",
                    });
                }
                Some(RequestLimit {
                    base,
                    min_rate: Some(MinRate {
                        bytes_per_second,
                        max,
                    }),
                })
            }
        };
        let deadlines = Deadlines {
            first_byte: positive(self.first_byte, "first_byte")?,
            idle: match (positive(self.idle, "idle")?, self.min_send_rate) {
                (None, Some(_)) => {
                    return Err(ConfigError::Inconsistent {
                        reason: "idle_min_send_rate needs an idle timeout",
                    });
                }
                (_, Some(0)) => {
                    return Err(ConfigError::Zero {
                        setting: "idle_min_send_rate",
                    });
                }
                (idle, rate) => idle.map(|after| IdleLimit {
                    after,
                    min_send_rate: rate.unwrap_or(DEFAULT_MIN_SEND_RATE),
                }),
            },
            request,
            lifetime: positive(self.lifetime, "lifetime")?.map(|after| Lifetime {
                after,
                grace: self.lifetime_grace.unwrap_or(DEFAULT_LIFETIME_GRACE),
            }),
        };
        if deadlines.is_empty() {
            return Err(ConfigError::Empty {
                needs: "a first-byte, idle, request or lifetime timeout",
            });
        }
        Ok(deadlines)
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// A connection-level service under a [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    shared: Arc<ArcSwap<Striped<Shared>>>,
}

impl<S> Timeout<S> {
    crate::inner_service_accessors!();
}

impl<S, IO> Service<Conn<IO>> for Timeout<S>
where
    S: Service<Conn<TimedIo<IO>>, Response = ()>,
    S::Error: Into<BoxError>,
    IO: AsyncRead + AsyncWrite,
{
    type Response = ();
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, conn: Conn<IO>) -> Self::Future {
        // Borrowed: `watch` takes the one reference the connection keeps.
        watch(conn, &self.shared.load(), |conn| self.inner.call(conn))
    }
}

/// The deadlines of the connections that started under them, and the counters every
/// clone and every reload shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(super) deadlines: Deadlines,
    /// What shrinks the deadlines under load.
    pub(super) scaler: Scaler,
    stats: Arc<Counters>,
    log: Arc<LogThrottle>,
}

#[derive(Debug)]
struct Counters {
    first_byte: Counter,
    idle: Counter,
    request: Counter,
    lifetime_wound_down: Counter,
    lifetime_cut: Counter,
}

impl Counters {
    fn new() -> Self {
        let timeout = |kind| Counter::metric(TIMEOUTS, &[("kind", kind)]);
        Self {
            first_byte: timeout("first_byte"),
            idle: timeout("idle"),
            request: timeout("request"),
            lifetime_wound_down: Counter::metric(EVICTIONS, &[("reason", "lifetime")]),
            lifetime_cut: timeout("lifetime"),
        }
    }
}

impl Shared {
    pub(crate) fn new(deadlines: Deadlines) -> Self {
        Self::with_scaler(deadlines, Scaler::default())
    }

    fn with_scaler(deadlines: Deadlines, scaler: Scaler) -> Self {
        Self {
            deadlines,
            scaler,
            stats: Arc::new(Counters::new()),
            log: Arc::new(LogThrottle::new(Duration::from_secs(1))),
        }
    }

    pub(super) fn expired(&self, error: TimeoutError, peer: SocketAddr) {
        let counter = match error {
            TimeoutError::FirstByte(_) => &self.stats.first_byte,
            TimeoutError::Idle(_) => &self.stats.idle,
            TimeoutError::Request(_) => &self.stats.request,
            TimeoutError::Lifetime(_) => &self.stats.lifetime_cut,
        };
        counter.add();
        if let Some(suppressed) = self.log.allow() {
            tracing::info!(%peer, %error, suppressed, "connection timed out");
        }
    }

    pub(super) fn wound_down(&self) {
        self.stats.lifetime_wound_down.add();
        tracing::debug!("connection reached its lifetime; asked to close");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_print_on_one_line() {
        let stats = TimeoutStats {
            first_byte: 4,
            idle: 2,
            request: 1,
            lifetime_wound_down: 3,
            lifetime_cut: 0,
        };
        assert_eq!(
            stats.to_string(),
            "timed out 7 (first byte 4, idle 2, request 1, lifetime 0), lifetime reached 3"
        );
    }
}
