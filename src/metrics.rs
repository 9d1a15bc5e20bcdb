//! The layers' figures as metrics, through the [`metrics`](https://docs.rs/metrics)
//! facade (feature `metrics`): the application installs any exporter (Prometheus,
//! StatsD, OpenTelemetry), this crate depends on none.
//!
//! Names follow OpenTelemetry's semantic conventions for connections (Kestrel's
//! `kestrel.active_connections`, `kestrel.connection.duration`,
//! `kestrel.rejected_connections`), prefixed `bouncer.`; the Prometheus exporter writes
//! the dots as underscores (with its recommended naming, counters also get `_total`
//! and durations `_seconds`). Every metric is counted where the matching `stats()`
//! counter is, so the two agree.
//!
//! Labels are bounded: a layer, a reason, a kind, an outcome, a listener's name. Never a
//! peer address or key.
//!
//! | Name | Type | Unit | Labels | What |
//! | --- | --- | --- | --- | --- |
//! | `bouncer.active_connections` | gauge | connections | `listener` | Connections being served by the accept loop ([`Server`](crate::serve::Server)). |
//! | `bouncer.connection.duration` | histogram | seconds | `listener` | How long each connection served by the accept loop lasted. |
//! | `bouncer.accept.paused` | gauge | — | `listener` | Accept loops of that name waiting for a full service (backpressure), 1 for a single loop: new connections queue in the kernel's backlog. A loop is counted out when its pause ends, and when it ends, however it ends (its future dropped too); loops sharing a name (two unnamed listeners are both `default`) are counted together. |
//! | `bouncer.accept.pause.duration` | histogram | seconds | `listener` | How long each such pause lasted. |
//! | `bouncer.rejected_connections` | counter | connections | `layer`, `reason`, `outcome` | Connections an admission layer refused (`outcome="rejected"`), or would have refused in dry run (`outcome="rejected_dry_run"`). |
//! | `bouncer.timeouts` | counter | connections | `kind` | Connections closed by a [`TimeoutLayer`](crate::timeout::TimeoutLayer) deadline: `first_byte`, `idle`, `request`, `lifetime` (cut after the grace). |
//! | `bouncer.evictions` | counter | connections | `reason` | Connections asked to close: `failed_logins`, `login_timeout`, `banned`, `requested` (login session), `overload_shed` (an idle one, to make room), `overload_long_lived` (the oldest judged by its bytes, to make room when none is idle), `lifetime` (past its lifetime). |
//! | `bouncer.bans.issued` | counter | bans | `reason` | Bans made: for an offence (its kind, as in `bouncer.penalties`), by an `operator`, or from the `fleet`. |
//! | `bouncer.bans.active` | gauge | bans | — | Bans in force, peer keys and networks; counted every 5 seconds from the first connection on. |
//! | `bouncer.penalties` | counter | offences | `kind` | Offences counted against their peer: `failed_login`, `first_byte_timeout`, `request_timeout`, `login_timeout`, `tls_handshake_timeout`, `tls_handshake_failure`, `http_protocol_error`, `over_limit`. |
//! | `bouncer.overload.pressure` | gauge | ratio | — | The [overload](crate::overload) pressure, 0 to 1, at each sample. |
//! | `bouncer.proxy_protocol.errors` | counter | connections | `reason` | Connections refused by the PROXY protocol layer: `missing`, `untrusted_header`, `malformed`, `too_long`, `timed_out`, `closed_early`, `evicted` (at a full `max_reading`, for a newer connection). |
//! | `bouncer.tls.handshake_errors` | counter | connections | `reason` | TLS handshakes that did not complete: `timeout`, `protocol`, `io`, `close_requested` (the connection was asked to close, as the server drains). |
//! | `bouncer.fleet.connected` | gauge | — | — | 1 while the fleet's store is reachable. |
//! | `bouncer.fleet.failures` | counter | failures | — | Times connecting to the fleet's store failed, or a link was lost. |
//! | `bouncer.fleet.pending` | gauge | changes | — | Bans and unbans made here that the store has not had yet. |
//! | `bouncer.fleet.dropped` | counter | changes | — | Offences and bans never sent to the store. |
//!
//! The `layer` and `reason` labels of `bouncer.rejected_connections`:
//!
//! | `layer` | `reason` |
//! | --- | --- |
//! | `connection_limit` | `connection_limit` |
//! | `peer_limit` | `peer_limit`, `peer_table_full` |
//! | `rate_limit` | `peer_rate`, `global_rate`, `peer_table_full` |
//! | `ban` | `banned`, `peer_table_full` |
//! | `startups` | `startups_full`, `early_drop`, `peer_startups` |
//!
//! # Install the recorder first
//!
//! Each layer registers its metrics once, when it is built, and then updates them
//! without looking anything up (no per-connection key lookup, no lock): install the
//! recorder (the exporter) before building the layers, and before calling
//! [`Server::serve`](crate::serve::Server::serve), which registers the accept loop's.
//! A layer built before reports to no recorder. The descriptions and units are given
//! to the recorder at the same time. A local recorder
//! (`metrics::with_local_recorder`) in force while the layers are built is the one
//! they report to from any task or thread, which is how the tests use one each.
//!
//! ```
//! use metrics_exporter_prometheus::PrometheusBuilder;
//! use tower_bouncer::peer_limit::PeerLimitLayer;
//!
//! let recorder = PrometheusBuilder::new()
//!     .with_recommended_naming(true)
//!     .build_recorder();
//! let prometheus = recorder.handle();
//! metrics::set_global_recorder(recorder).expect("the only recorder");
//! // Then build the layers.
//! let per_peer = PeerLimitLayer::builder(32).build().expect("a valid limit");
//! # let _ = per_peer;
//! // Serve `prometheus.render()` on a private address.
//! assert!(prometheus.render().contains("bouncer_rejected_connections_total"));
//! ```

// Without the feature the names are given to handles that do nothing, and some go
// unused.
#![cfg_attr(not(feature = "metrics"), allow(dead_code, unreachable_pub))]

#[cfg(feature = "metrics")]
use ::metrics::{Label, Unit};

/// Connections being served by the accept loop (gauge; label `listener`).
pub const ACTIVE_CONNECTIONS: &str = "bouncer.active_connections";
/// How long each connection lasted, in seconds (histogram; label `listener`).
pub const CONNECTION_DURATION: &str = "bouncer.connection.duration";
/// The accept loops waiting for a full service, 1 for a single loop (gauge; label
/// `listener`).
pub const ACCEPT_PAUSED: &str = "bouncer.accept.paused";
/// How long each pause of the accept loop lasted, in seconds (histogram; label
/// `listener`).
pub const ACCEPT_PAUSE_DURATION: &str = "bouncer.accept.pause.duration";
/// Connections refused, or that would have been in dry run (counter; labels `layer`,
/// `reason`, `outcome`).
pub const REJECTED_CONNECTIONS: &str = "bouncer.rejected_connections";
/// Connections closed by a deadline (counter; label `kind`).
pub const TIMEOUTS: &str = "bouncer.timeouts";
/// Connections asked to close (counter; label `reason`).
pub const EVICTIONS: &str = "bouncer.evictions";
/// Bans made (counter; label `reason`).
pub const BANS_ISSUED: &str = "bouncer.bans.issued";
/// Bans in force (gauge).
pub const BANS_ACTIVE: &str = "bouncer.bans.active";
/// Offences counted against their peer (counter; label `kind`).
pub const PENALTIES: &str = "bouncer.penalties";
/// The overload pressure, 0 to 1 (gauge).
pub const OVERLOAD_PRESSURE: &str = "bouncer.overload.pressure";
/// Connections refused by the PROXY protocol layer (counter; label `reason`).
pub const PROXY_PROTOCOL_ERRORS: &str = "bouncer.proxy_protocol.errors";
/// TLS handshakes that did not complete (counter; label `reason`).
pub const TLS_HANDSHAKE_ERRORS: &str = "bouncer.tls.handshake_errors";
/// 1 while the fleet's store is reachable (gauge).
pub const FLEET_CONNECTED: &str = "bouncer.fleet.connected";
/// Times connecting to the fleet's store failed or a link was lost (counter).
pub const FLEET_FAILURES: &str = "bouncer.fleet.failures";
/// Changes made here that the fleet's store has not had yet (gauge).
pub const FLEET_PENDING: &str = "bouncer.fleet.pending";
/// Offences and bans never sent to the fleet's store (counter).
pub const FLEET_DROPPED: &str = "bouncer.fleet.dropped";

/// The label value of `outcome` for a connection refused.
pub const REJECTED: &str = "rejected";
/// The label value of `outcome` for a connection that dry run let through.
pub const REJECTED_DRY_RUN: &str = "rejected_dry_run";

/// Every metric: its name, unit and description, given to the recorder when a handle
/// is registered.
#[cfg(feature = "metrics")]
const DESCRIPTIONS: [(&str, Option<Unit>, &str); 17] = [
    (
        ACTIVE_CONNECTIONS,
        Some(Unit::Count),
        "Connections being served by the accept loop.",
    ),
    (
        CONNECTION_DURATION,
        Some(Unit::Seconds),
        "How long each connection served by the accept loop lasted.",
    ),
    (
        ACCEPT_PAUSED,
        None,
        "Accept loops waiting for a full service; new connections queue in the backlog.",
    ),
    (
        ACCEPT_PAUSE_DURATION,
        Some(Unit::Seconds),
        "How long each pause of the accept loop lasted.",
    ),
    (
        REJECTED_CONNECTIONS,
        Some(Unit::Count),
        "Connections an admission layer refused, or would have refused in dry run.",
    ),
    (
        TIMEOUTS,
        Some(Unit::Count),
        "Connections closed by a deadline, by kind.",
    ),
    (
        EVICTIONS,
        Some(Unit::Count),
        "Connections asked to close, by reason.",
    ),
    (BANS_ISSUED, Some(Unit::Count), "Bans made, by reason."),
    (BANS_ACTIVE, Some(Unit::Count), "Bans in force."),
    (
        PENALTIES,
        Some(Unit::Count),
        "Offences counted against their peer, by kind.",
    ),
    (
        OVERLOAD_PRESSURE,
        None,
        "The overload pressure, from 0 to 1.",
    ),
    (
        PROXY_PROTOCOL_ERRORS,
        Some(Unit::Count),
        "Connections refused by the PROXY protocol layer, by reason.",
    ),
    (
        TLS_HANDSHAKE_ERRORS,
        Some(Unit::Count),
        "TLS handshakes that did not complete, by reason.",
    ),
    (
        FLEET_CONNECTED,
        None,
        "1 while the fleet's store is reachable.",
    ),
    (
        FLEET_FAILURES,
        Some(Unit::Count),
        "Times connecting to the fleet's store failed or a link was lost.",
    ),
    (
        FLEET_PENDING,
        Some(Unit::Count),
        "Bans and unbans made here that the fleet's store has not had yet.",
    ),
    (
        FLEET_DROPPED,
        Some(Unit::Count),
        "Offences and bans never sent to the fleet's store.",
    ),
];

/// Labels as the recorder takes them.
#[cfg(feature = "metrics")]
fn labels(pairs: &[(&'static str, &str)]) -> Vec<Label> {
    pairs
        .iter()
        .map(|&(key, value)| Label::new(key, value.to_owned()))
        .collect()
}

/// Gives `name`'s description and unit to the current recorder.
#[cfg(feature = "metrics")]
fn describe(
    name: &'static str,
    describe: impl FnOnce(
        &dyn ::metrics::Recorder,
        ::metrics::KeyName,
        Option<Unit>,
        ::metrics::SharedString,
    ),
) {
    if let Some((_, unit, text)) = DESCRIPTIONS.iter().find(|(known, ..)| *known == name) {
        ::metrics::with_recorder(|recorder| {
            describe(recorder, name.into(), *unit, (*text).into());
        });
    }
}

/// A counter metric registered once; nothing without the feature.
#[derive(Clone)]
pub(crate) struct Count {
    #[cfg(feature = "metrics")]
    handle: ::metrics::Counter,
}

/// A counter that counts nowhere.
impl Default for Count {
    fn default() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            handle: ::metrics::Counter::noop(),
        }
    }
}

impl Count {
    /// Registers `name` with `labels` with the current recorder.
    pub(crate) fn new(name: &'static str, labels: &[(&'static str, &str)]) -> Self {
        #[cfg(feature = "metrics")]
        {
            describe(name, |recorder, key, unit, text| {
                recorder.describe_counter(key, unit, text);
            });
            let key = ::metrics::Key::from_parts(name, self::labels(labels));
            Self {
                handle: ::metrics::with_recorder(|recorder| {
                    recorder.register_counter(&key, &metadata())
                }),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = (name, labels);
            Self {}
        }
    }

    #[inline]
    pub(crate) fn add(&self, n: u64) {
        #[cfg(feature = "metrics")]
        self.handle.increment(n);
        #[cfg(not(feature = "metrics"))]
        let _ = n;
    }
}

/// A gauge metric registered once; nothing without the feature.
#[derive(Clone)]
pub(crate) struct Level {
    #[cfg(feature = "metrics")]
    handle: ::metrics::Gauge,
}

impl Level {
    /// Registers `name` with `labels` with the current recorder.
    pub(crate) fn new(name: &'static str, labels: &[(&'static str, &str)]) -> Self {
        #[cfg(feature = "metrics")]
        {
            describe(name, |recorder, key, unit, text| {
                recorder.describe_gauge(key, unit, text);
            });
            let key = ::metrics::Key::from_parts(name, self::labels(labels));
            Self {
                handle: ::metrics::with_recorder(|recorder| {
                    recorder.register_gauge(&key, &metadata())
                }),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = (name, labels);
            Self {}
        }
    }

    #[inline]
    pub(crate) fn set(&self, value: f64) {
        #[cfg(feature = "metrics")]
        self.handle.set(value);
        #[cfg(not(feature = "metrics"))]
        let _ = value;
    }

    #[inline]
    pub(crate) fn up(&self) {
        #[cfg(feature = "metrics")]
        self.handle.increment(1.0);
    }

    #[inline]
    pub(crate) fn down(&self) {
        #[cfg(feature = "metrics")]
        self.handle.decrement(1.0);
    }
}

/// A histogram of durations in seconds, registered once; nothing without the feature.
#[derive(Clone)]
pub(crate) struct Seconds {
    #[cfg(feature = "metrics")]
    handle: ::metrics::Histogram,
}

impl Seconds {
    /// Registers `name` with `labels` with the current recorder.
    pub(crate) fn new(name: &'static str, labels: &[(&'static str, &str)]) -> Self {
        #[cfg(feature = "metrics")]
        {
            describe(name, |recorder, key, unit, text| {
                recorder.describe_histogram(key, unit, text);
            });
            let key = ::metrics::Key::from_parts(name, self::labels(labels));
            Self {
                handle: ::metrics::with_recorder(|recorder| {
                    recorder.register_histogram(&key, &metadata())
                }),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = (name, labels);
            Self {}
        }
    }

    #[inline]
    pub(crate) fn record(&self, duration: std::time::Duration) {
        #[cfg(feature = "metrics")]
        self.handle.record(duration.as_secs_f64());
        #[cfg(not(feature = "metrics"))]
        let _ = duration;
    }
}

impl Seconds {
    /// Starts timing something whose duration is recorded when the returned watch is
    /// dropped. Without the feature, the clock is not read.
    pub(crate) fn start(&self) -> Stopwatch {
        Stopwatch {
            #[cfg(feature = "metrics")]
            timed: (self.clone(), tokio::time::Instant::now()),
        }
    }
}

/// Records how long it lived in a [`Seconds`] histogram when dropped.
pub(crate) struct Stopwatch {
    #[cfg(feature = "metrics")]
    timed: (Seconds, tokio::time::Instant),
}

impl Drop for Stopwatch {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        self.timed.0.record(self.timed.1.elapsed());
    }
}

/// Runs `build` with no recorder in force, so that what it builds (layers, an accept
/// loop's [`serve`](crate::serve::Server::serve)) reports nowhere: for servers that are
/// not the application's, such as the admin page's own.
#[cfg(feature = "admin")]
pub(crate) fn unrecorded<T>(build: impl FnOnce() -> T) -> T {
    #[cfg(feature = "metrics")]
    {
        ::metrics::with_local_recorder(&::metrics::NoopRecorder, build)
    }
    #[cfg(not(feature = "metrics"))]
    {
        build()
    }
}

#[cfg(feature = "metrics")]
fn metadata() -> ::metrics::Metadata<'static> {
    ::metrics::Metadata::new(module_path!(), ::metrics::Level::INFO, Some(module_path!()))
}

macro_rules! debug_as_name {
    ($($handle:ident),*) => {$(
        impl std::fmt::Debug for $handle {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(stringify!($handle))
            }
        }
    )*};
}
debug_as_name!(Count, Level, Seconds, Stopwatch);
