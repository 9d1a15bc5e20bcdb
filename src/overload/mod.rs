//! An overload manager, after Envoy's, in process: one number, the pressure, that every
//! layer can read, and what the layers do as it rises.
//!
//! **Pressure** runs from 0 to 1. It comes from the *load* of each resource, from 0
//! (unused) to 1 (exhausted), the highest of them counting:
//!
//! - **connections**: the live connections of the [`ConnectionLimitLayer`] built with
//!   this manager, against its cap, read live;
//! - **descriptors** (Linux): the process's open descriptors against its soft limit. The
//!   manager counts `/proc/self/fd` once per [sample
//!   period](OverloadBuilder::sample_every), a second by default (a count takes 0.2 ms
//!   with 1 000 open, 1.4 ms with 4 000, 14 ms with 16 000 on a 2-core VM), and in
//!   between follows the live connection count, one descriptor each, so that a flood
//!   shows at once;
//! - **memory** (opt-in): the cgroup v2 `memory.current` against `memory.max`, sampled;
//! - **monitors**: any function returning a load, sampled.
//!
//! The load becomes pressure through Envoy's *scaled trigger*: 0 below the start
//! threshold, rising linearly to 1 at the full threshold (80 % and 95 % by default).
//! [`Overload::pressure`] reads it at any time for a few atomic loads, without a lock or
//! a system call.
//!
//! What the layers built with the manager do with it:
//!
//! - **Timeouts shrink** (Envoy's `reduce_timeouts`): each deadline is multiplied by
//!   `1 − pressure × (1 − min)`, down to a [minimum](OverloadBuilder::min_timeout_scale)
//!   of a fifth of itself at full pressure. This holds for the [`TimeoutLayer`]'s
//!   first-byte, idle and request timeouts (and the HTTP adapter's own, which fill its
//!   gaps), the login timeout, the TLS handshake and the PROXY header; not for the
//!   lifetime, which is a policy, not a defence. A scaled deadline is looked at every
//!   eighth of its length at least, so a rise in pressure takes effect within that.
//! - **Idle connections make room**: at a full cap, a new connection is admitted at
//!   once, and an idle connection is asked to close gracefully in its place (its
//!   [`GracefulClose`] is raised: HTTP/1.1 between requests closes
//!   at once, HTTP/2 sends GOAWAY; a raw protocol closes when it sees the request). If it
//!   is still idle once its protocol has been polled with the request, it is cut then,
//!   without waiting on its client: an HTTP/2 client that never acknowledges the
//!   GOAWAY's PING would otherwise keep its place among the evictions under way for the
//!   adapter's close grace, and a crowd of them would stall the evictions. The eviction
//!   wakes the connection's own task for that poll: a raw protocol that does not listen
//!   for the request, whose client sends nothing and whose timer has nothing ahead, is
//!   cut all the same. One that has begun a request meanwhile finishes it, as does one
//!   judged by its bytes that has moved one since it was chosen: under the HTTP
//!   adapter, within its [close grace](crate::http::HttpServiceBuilder::close_grace),
//!   after which the adapter cuts it as it cuts any plain close; under any other
//!   protocol, within 30 s of its eviction, when it is cut at its next wake-up, so that
//!   no connection its client keeps busy holds one of the evictions under way for good.
//!   One evicted for its age (see below) is cut however busy. So the cap is exceeded, briefly, by the connections
//!   being evicted: at most one for every 16 of the cap, beyond which new connections
//!   are refused as before. Waiting instead for the victim to close would not save the
//!   newcomer's descriptor, which is open already. In
//!   [backpressure](crate::limit::ConnectionLimitBuilder::backpressure) mode nothing is
//!   evicted: new connections wait in the kernel's backlog, unseen, and the idle
//!   timeout, shrunk at a full cap, makes room. Nor in
//!   [dry run](crate::admission#dry-run), which serves the newcomer over the cap and
//!   counts it, no real connection closing for it; nor while the live count is over
//!   the cap by more than the evictions under way (a reload has lowered the cap below
//!   it): newcomers are refused until enough connections have ended, instead of each
//!   taking the place of one it evicts.
//!
//! # Which connections are idle
//!
//! Idleness is what the protocol declares, known to the [`TimeoutLayer`] built with the
//! manager: under the [HTTP adapter](crate::http), no request open (HTTP/1.1 keep-alive
//! between requests, HTTP/2 with no stream); under a raw protocol that marks its
//! requests with a [`RequestTimer`](crate::timeout::RequestTimer), between a finished
//! request and the next byte. A connection with no such declaration (a raw protocol
//! without a request timeout, a WebSocket once the HTTP adapter has handed it over), and
//! one whose every open request has been answered and only streams its response (a gRPC
//! server stream, server-sent events), is idle once no byte (on HTTP/2, no DATA) has
//! moved for
//! [`evict_quiet_after`](OverloadBuilder::evict_quiet_after) (10 s by default). A
//! connection whose output has waited for a second with not a byte of it taken (an
//! HTTP/2 window its client keeps at zero, a socket it never reads) is idle too,
//! whatever it has open: its client holds the place and takes nothing. Both are seen by
//! the idle timeout's watch, at its timer's looks, so they need an idle timeout: under a
//! [`TimeoutLayer`] without one, a connection judged by its bytes is never found quiet
//! (it gives way only for its age, as below, cut rather than asked to close), and one
//! whose client takes nothing is not found stalled. On
//! HTTP/2, output waits on the client only while one of its flow-control windows (the
//! connection's, or an open stream's) is at zero, as the adapter follows them in the
//! frames: data hyper drops unsent with a reset stream is no stall. A connection in the
//! middle of a request, with a response its client is taking, or still in its TLS
//! handshake, is not idle. Nor is one that has read nothing yet in its first second: its
//! first request may be on its way. An HTTP/2 connection told goodbye at its idle
//! timeout (GOAWAY) is not offered for the second before its cut: evicting it would
//! free nothing sooner. One that goes back to serving a stream its client opened as the
//! GOAWAY came is offered again, and, idle once that stream is over, evicted as any.
//!
//! Among the idle connections, the victim is one of the peer that holds the most of
//! them, so that a peer hoarding idle connections loses them first; then the one idle
//! longest. How long a connection has been idle is sampled by its timer, which looks
//! every eighth of its idle timeout; without an idle timeout nothing samples it, and
//! which of a peer's idle connections goes is left to chance.
//!
//! When no connection is idle, the oldest of those judged by their bytes gives way,
//! once it has lived `evict_quiet_after`, chosen in the same way by peer, and is cut at
//! once: a WebSocket, a raw connection or a response stream may never fall quiet (a
//! byte every few seconds keeps it busy), and a crowd of them would otherwise hold the
//! cap until their lifetime. A request in progress is not evicted this way, under the
//! HTTP adapter or a raw protocol's request timer: its request timeout bounds it. Nor is
//! a request whose handler has not answered yet: that is the application's time to
//! bound.
//!
//! # What it costs
//!
//! Nothing on the admission path while the cap has room: the registry of evictable
//! connections is kept only under load, and under a cap that evicts (in backpressure
//! mode, none joins it). A connection joins it (a short lock on one of
//! eight shards, taken by thread) when it starts, or at its timer's next look, once the
//! load reaches half the start threshold, and leaves it when it ends. Under a
//! [`TimeoutLayer`] without an idle timeout, whose timer may never look again, a
//! connection joins when it starts, whatever the load. A registered connection leaves
//! its task's waker with its timer, so that an eviction can wake it: a lock-free
//! registration when it joins and when its task's waker changes, and a load and a
//! waker comparison at each wake-up, as a timer of requests already costs. An eviction
//! looks at 256 registered connections at most: from the next shard each time, and in
//! each shard from where the last look in it ended, so that every registered
//! connection is seen in turn.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_bouncer::{limit::ConnectionLimitLayer, overload::Overload, timeout::TimeoutLayer};
//! # use tower_bouncer::{Conn, timeout::TimedIo};
//! # let protocol = tower::service_fn(|_: Conn<TimedIo<tokio::net::TcpStream>>| async { Ok::<_, std::io::Error>(()) });
//!
//! let overload = Overload::builder().build().expect("valid settings");
//! let service = ServiceBuilder::new()
//!     .layer(ConnectionLimitLayer::builder(4096).overload(&overload).build().expect("a valid cap"))
//!     .layer(
//!         TimeoutLayer::builder()
//!             .idle(Duration::from_secs(60))
//!             .overload(&overload)
//!             .build()
//!             .expect("valid timeouts"),
//!     )
//!     .service(protocol);
//! # let _ = service;
//! println!("pressure {:.2}", overload.pressure());
//! ```
//!
//! [`ConnectionLimitLayer`]: crate::limit::ConnectionLimitLayer
//! [`TimeoutLayer`]: crate::timeout::TimeoutLayer

mod pressure;
mod registry;

use std::{
    fmt,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::{
    ConfigError, GracefulClose,
    config::nonzero,
    janitor::Janitor,
    limit,
    metrics::{Level, OVERLOAD_PRESSURE},
    peer::PeerKeying,
    timeout::Activity,
};
use pressure::{Sampled, Trigger};
pub(crate) use registry::{Registry, Standing};

const DEFAULT_START: f64 = 0.8;
const DEFAULT_FULL: f64 = 0.95;
const DEFAULT_MIN_TIMEOUT_SCALE: f64 = 0.2;
const DEFAULT_SAMPLE_EVERY: Duration = Duration::from_secs(1);
const DEFAULT_QUIET_AFTER: Duration = Duration::from_secs(10);

/// The overload manager: the pressure, and what the layers built with it do under it.
/// See the [module documentation](self).
///
/// Cheap to clone; clones share one state. Give it to one
/// [`ConnectionLimitBuilder`](crate::limit::ConnectionLimitBuilder) and to the layers
/// whose deadlines should shrink.
#[derive(Debug, Clone)]
pub struct Overload {
    shared: Arc<Shared>,
}

/// Builds an [`Overload`]. The defaults: pressure from the connection cap and the
/// descriptors, starting at 80 % and full at 95 %, timeouts down to a fifth at full
/// pressure, idle connections evicted at a full cap.
#[derive(Clone)]
#[must_use]
pub struct OverloadBuilder {
    trigger: Trigger,
    min_timeout_scale: f64,
    descriptors: bool,
    cgroup_memory: bool,
    monitors: Vec<Monitor>,
    sample_every: Duration,
    evict_idle: bool,
    quiet_after: Duration,
    keying: PeerKeying,
}

/// A user's load function.
type Monitor = Arc<dyn Fn() -> f64 + Send + Sync>;

/// What an [`Overload`] manager sees and has done.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct OverloadStats {
    /// The pressure now, from 0 to 1.
    pub pressure: f64,
    /// The live connections against the cap, if a cap was built with the manager.
    pub connections: Option<f64>,
    /// The open descriptors against the soft limit, if they are watched and known.
    pub descriptors: Option<f64>,
    /// The cgroup's memory against its limit, if watched and limited.
    pub memory: Option<f64>,
    /// The highest load the monitors gave at the last sample, if there are any.
    pub monitors: Option<f64>,
    /// Idle connections asked to close to make room for a new one.
    pub evicted_idle: u64,
    /// Long-lived connections judged by their bytes (WebSockets, raw protocols with no
    /// request in progress) evicted to make room, none being idle.
    pub evicted_long_lived: u64,
    /// Connections in the registry of those that may be evicted, now.
    pub registered: usize,
    /// How long the pressure has been above zero, and so timeouts shortened, counted
    /// in sample periods.
    pub time_under_pressure: Duration,
}

/// One line: `pressure 0.25 (connections 0.90, descriptors 0.10, memory -, monitors
/// -), evicted idle 4, long-lived 1, registered 120, under pressure for 12s`.
impl fmt::Display for OverloadStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let load =
            |load: Option<f64>| load.map_or_else(|| "-".to_owned(), |load| format!("{load:.2}"));
        write!(
            f,
            "pressure {:.2} (connections {}, descriptors {}, memory {}, monitors {}), evicted idle {}, long-lived {}, registered {}, under pressure for {:?}",
            self.pressure,
            load(self.connections),
            load(self.descriptors),
            load(self.memory),
            load(self.monitors),
            self.evicted_idle,
            self.evicted_long_lived,
            self.registered,
            self.time_under_pressure
        )
    }
}

impl Overload {
    /// The defaults; see [`OverloadBuilder`].
    pub fn builder() -> OverloadBuilder {
        OverloadBuilder {
            trigger: Trigger {
                start: DEFAULT_START,
                full: DEFAULT_FULL,
            },
            min_timeout_scale: DEFAULT_MIN_TIMEOUT_SCALE,
            descriptors: true,
            cgroup_memory: false,
            monitors: Vec::new(),
            sample_every: DEFAULT_SAMPLE_EVERY,
            evict_idle: true,
            quiet_after: DEFAULT_QUIET_AFTER,
            keying: PeerKeying::default(),
        }
    }

    /// The pressure now, from 0 (below the start threshold) to 1 (at or past the full
    /// threshold).
    pub fn pressure(&self) -> f64 {
        self.shared.ensure_sampler();
        self.shared.pressure()
    }

    /// What the manager sees now, and what it has done.
    pub fn stats(&self) -> OverloadStats {
        let shared = &self.shared;
        shared.ensure_sampler();
        let live = shared.live();
        OverloadStats {
            pressure: shared.pressure(),
            connections: shared.cap.get().map(|cap| cap.load()),
            descriptors: shared.sampled.descriptors(live.unwrap_or(0)),
            memory: shared.sampled.memory(),
            monitors: shared.sampled.monitors(),
            evicted_idle: shared.registry.as_ref().map_or(0, |r| r.evicted()),
            evicted_long_lived: shared
                .registry
                .as_ref()
                .map_or(0, |r| r.evicted_long_lived()),
            registered: shared.registry.as_ref().map_or(0, |r| r.len()),
            time_under_pressure: Duration::from_nanos(
                shared.time_under_pressure.load(Ordering::Relaxed),
            ),
        }
    }

    /// What deadlines are multiplied by now. Every look of a deadline under the
    /// manager asks, evictions or not: it also makes sure the sources are sampled, on
    /// the current runtime (a manager built before the runtime, or one whose sampler's
    /// runtime has ended, would otherwise keep the monitors, memory and descriptors it
    /// read last). One relaxed load while the sampler runs.
    pub(crate) fn timeout_factor(&self) -> f64 {
        let shared = &self.shared;
        shared.ensure_sampler();
        1.0 - shared.pressure() * (1.0 - shared.min_timeout_scale)
    }

    /// What deadlines are multiplied by at full pressure.
    pub(crate) fn min_timeout_factor(&self) -> f64 {
        self.shared.min_timeout_scale
    }

    /// Counts `cap`'s connections in the pressure.
    pub(crate) fn watch_cap(&self, cap: Arc<limit::Shared>) -> Result<(), ConfigError> {
        self.shared
            .cap
            .set(cap)
            .map_err(|_| ConfigError::Inconsistent {
                reason: "an overload manager watches one connection limit",
            })
    }

    /// The connections a cap may evict from, if eviction is on.
    pub(crate) fn registry(&self) -> Option<Arc<Registry>> {
        self.shared.registry.clone()
    }

    /// Whether connections under this manager may be evicted, and so need their
    /// [`Standing`]: eviction is on and the cap it watches evicts (a cap in
    /// backpressure mode does not, nor is there anything to evict for without a cap).
    pub(crate) fn evicts(&self) -> bool {
        self.shared.registry.is_some() && self.shared.cap.get().is_some_and(|cap| cap.evicts())
    }

    /// Registers a connection that is not, if the load is high enough for evictions to
    /// be near, or `whatever_the_load`. Called at each look of the connection's timer,
    /// the first when it starts. (The timer's look reads the
    /// [`timeout_factor`](Self::timeout_factor) too, which keeps the sources sampled.)
    pub(crate) fn enrol(
        &self,
        standing: &mut Standing,
        activity: &Arc<Activity>,
        close: &GracefulClose,
        whatever_the_load: bool,
    ) {
        let (Standing::Unregistered(peer), Some(registry)) = (&*standing, &self.shared.registry)
        else {
            return;
        };
        if whatever_the_load || self.shared.enrols() {
            *standing = Standing::Registered(registry.register(activity, close, *peer));
        }
    }
}

impl OverloadBuilder {
    /// The scaled trigger: the pressure is 0 while the load is below `start`, and rises
    /// linearly to 1 at `full` (Envoy's `scaling_threshold` and
    /// `saturation_threshold`); 0.8 and 0.95 by default.
    pub fn thresholds(mut self, start: f64, full: f64) -> Self {
        self.trigger = Trigger { start, full };
        self
    }

    /// What timeouts are multiplied by at full pressure; 0.2 by default. At a pressure
    /// `p` they are multiplied by `1 − p × (1 − scale)`; 1 leaves them alone.
    pub fn min_timeout_scale(mut self, scale: f64) -> Self {
        self.min_timeout_scale = scale;
        self
    }

    /// Whether the process's open descriptors count, against its soft limit (Linux);
    /// on by default.
    pub fn descriptors(mut self, watch: bool) -> Self {
        self.descriptors = watch;
        self
    }

    /// Whether the cgroup v2 memory use counts, against the cgroup's `memory.max`, if
    /// the process has one; off by default, because `memory.current` counts the page
    /// cache, which the kernel lets grow up to the limit before it reclaims it.
    pub fn cgroup_memory(mut self, watch: bool) -> Self {
        self.cgroup_memory = watch;
        self
    }

    /// Adds a load of the application's own, from 0 to 1 (a queue's depth against its
    /// bound, say), called once per sample period on a runtime thread: it must be quick.
    /// Values outside 0..1 are clamped, NaN is 0.
    pub fn monitor(mut self, load: impl Fn() -> f64 + Send + Sync + 'static) -> Self {
        self.monitors.push(Arc::new(load));
        self
    }

    /// How often descriptors, memory and monitors are sampled; 1 s by default.
    pub fn sample_every(mut self, period: Duration) -> Self {
        self.sample_every = period;
        self
    }

    /// Whether a new connection at a full cap evicts an idle one instead of being
    /// refused; on by default.
    pub fn evict_idle(mut self, evict: bool) -> Self {
        self.evict_idle = evict;
        self
    }

    /// How long a connection that declares nothing (no request timer, no HTTP adapter,
    /// or a WebSocket) must have moved no byte to be evicted; 10 s by default. Also how
    /// long such a connection keeps its place, busy, when nothing is idle: older, the
    /// oldest gives way to a newcomer.
    pub fn evict_quiet_after(mut self, quiet: Duration) -> Self {
        self.quiet_after = quiet;
        self
    }

    /// Who a peer is, for evicting first from the peer with the most idle connections;
    /// IPv4 by address and IPv6 by /64 by default.
    pub fn keying(mut self, keying: PeerKeying) -> Self {
        self.keying = keying;
        self
    }

    /// # Errors
    ///
    /// [`ConfigError::Inconsistent`] for thresholds not within `0 <= start < full <= 1`
    /// or a minimum timeout scale not within `0 < scale <= 1`; [`ConfigError::Zero`]
    /// for a zero sample period.
    pub fn build(self) -> Result<Overload, ConfigError> {
        let Trigger { start, full } = self.trigger;
        if !(0.0 <= start && start < full && full <= 1.0) {
            return Err(ConfigError::Inconsistent {
                reason: "the overload thresholds need 0 <= start < full <= 1",
            });
        }
        let scale = self.min_timeout_scale;
        if !(scale > 0.0 && scale <= 1.0) {
            return Err(ConfigError::Inconsistent {
                reason: "the minimum timeout scale needs 0 < scale <= 1",
            });
        }
        let shared = Arc::new(Shared {
            trigger: self.trigger,
            min_timeout_scale: scale,
            cap: OnceLock::new(),
            sampled: Sampled::new(self.descriptors, self.cgroup_memory, self.monitors),
            registry: self
                .evict_idle
                .then(|| Arc::new(Registry::new(self.keying, self.quiet_after))),
            enrol_from: AtomicUsize::new(usize::MAX),
            sampler: Janitor::default(),
            sample_every: nonzero(self.sample_every, "sample_every")?,
            time_under_pressure: AtomicU64::new(0),
            pressure_metric: Level::new(OVERLOAD_PRESSURE, &[]),
        });
        shared.read_sources();
        shared.ensure_sampler();
        Ok(Overload { shared })
    }
}

impl fmt::Debug for OverloadBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OverloadBuilder")
            .field("trigger", &self.trigger)
            .field("min_timeout_scale", &self.min_timeout_scale)
            .field("descriptors", &self.descriptors)
            .field("cgroup_memory", &self.cgroup_memory)
            .field("monitors", &self.monitors.len())
            .field("sample_every", &self.sample_every)
            .field("evict_idle", &self.evict_idle)
            .field("evict_quiet_after", &self.quiet_after)
            .finish_non_exhaustive()
    }
}

/// The state every clone shares.
#[derive(Debug)]
struct Shared {
    trigger: Trigger,
    min_timeout_scale: f64,
    /// The connection cap whose live count is a load, once one is built with the
    /// manager.
    cap: OnceLock<Arc<limit::Shared>>,
    sampled: Sampled,
    /// The connections that may be evicted; `None` with eviction off.
    registry: Option<Arc<Registry>>,
    /// The live connections from which the sources the last sample read put the load
    /// where connections enrol for eviction (see [`Sampled::live_reaching`]).
    enrol_from: AtomicUsize,
    sampler: Janitor,
    sample_every: Duration,
    /// Nanoseconds.
    time_under_pressure: AtomicU64,
    /// The pressure at each sample, as a metric.
    pressure_metric: Level,
}

impl Shared {
    fn live(&self) -> Option<usize> {
        self.cap.get().map(|cap| cap.live())
    }

    /// The highest load of all sources.
    fn load(&self) -> f64 {
        self.load_with(self.live())
    }

    /// The highest load of all sources, with `live` connections under the cap.
    fn load_with(&self, live: Option<usize>) -> f64 {
        let connections = match (self.cap.get(), live) {
            (Some(cap), Some(live)) => cap.load_at(live),
            _ => 0.0,
        };
        let descriptors = self.sampled.descriptors(live.unwrap_or(0)).unwrap_or(0.0);
        connections
            .max(descriptors)
            .max(self.sampled.sampled_load())
    }

    /// The load from which connections enrol for eviction: half the trigger's start,
    /// so that they are registered before the pressure rises.
    fn enrol_level(&self) -> f64 {
        self.trigger.start / 2.0
    }

    /// Whether the load has reached [`enrol_level`](Self::enrol_level).
    /// Asked for every connection: at a low load, a bound on the live count from one
    /// word of the cap settles it against what the last sample left; the exact count,
    /// which reads every stripe's hoard, is read only when the bound does not.
    fn enrols(&self) -> bool {
        let level = self.enrol_level();
        let sampled_from = self.enrol_from.load(Ordering::Relaxed);
        let may = match self.cap.get() {
            Some(cap) => {
                let at_most = cap.live_at_most();
                at_most >= sampled_from || at_most as f64 >= cap.max() as f64 * level
            }
            None => sampled_from == 0,
        };
        may && self.load() >= level
    }

    fn pressure(&self) -> f64 {
        // None below the trigger's start: the bound says so at a low load.
        let at_most = self.cap.get().map(|cap| cap.live_at_most());
        if self.load_with(at_most) <= self.trigger.start {
            return 0.0;
        }
        self.trigger.pressure(self.load())
    }

    /// Reads every source, and works out from them when connections enrol.
    fn read_sources(&self) {
        self.sampled.sample(self.live());
        self.enrol_from.store(
            self.sampled.live_reaching(self.enrol_level()),
            Ordering::Relaxed,
        );
    }

    /// Makes sure a task samples the sources, on the current runtime.
    fn ensure_sampler(self: &Arc<Self>) {
        self.sampler.ensure(self, self.sample_every, Self::sample);
    }

    fn sample(&self) {
        self.read_sources();
        let pressure = self.pressure();
        self.pressure_metric.set(pressure);
        if pressure > 0.0 {
            let period = u64::try_from(self.sample_every.as_nanos()).unwrap_or(u64::MAX);
            self.time_under_pressure
                .fetch_add(period, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_print_on_one_line() {
        let stats = OverloadStats {
            pressure: 0.25,
            connections: Some(0.9),
            descriptors: Some(0.1),
            memory: None,
            monitors: None,
            evicted_idle: 4,
            evicted_long_lived: 1,
            registered: 120,
            time_under_pressure: Duration::from_secs(12),
        };
        assert_eq!(
            stats.to_string(),
            "pressure 0.25 (connections 0.90, descriptors 0.10, memory -, monitors -), evicted idle 4, long-lived 1, registered 120, under pressure for 12s"
        );
    }
}
