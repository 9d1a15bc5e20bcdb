//! The layers the page reads, and `GET /stats`: their figures as JSON.

use std::sync::Arc;

use axum::{extract::State, http::StatusCode, response::Response};
use serde_json::{Value, json};

use super::{Shared, json};
use crate::{limit::ConnectionLimitLayer, login::Login, timeout::TimeoutLayer};

/// The layers given to the builder: clones, which share their state with the layers
/// serving the application.
#[derive(Debug, Clone, Default)]
pub(super) struct Sources {
    pub(super) login: Option<Login>,
    #[cfg(feature = "peer-limit")]
    pub(super) peer_limit: Option<crate::peer_limit::PeerLimitLayer>,
    pub(super) connection_limit: Option<ConnectionLimitLayer>,
    #[cfg(feature = "rate-limit")]
    pub(super) rate_limit: Option<crate::rate_limit::RateLimitLayer>,
    pub(super) timeouts: Option<TimeoutLayer>,
    #[cfg(feature = "overload")]
    pub(super) overload: Option<crate::overload::Overload>,
}

/// The figures the dashboard draws, added up over the layers given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Totals {
    /// Connections being served, if the global cap was given.
    pub(super) live: Option<usize>,
    /// Connections refused by any layer, so far.
    pub(super) refused: u64,
    /// Connections a layer in dry run would have refused, and served; so far.
    pub(super) dry_run_refusals: u64,
    /// Connections the layers closed early: after failed logins, for a login timeout
    /// or a ban, on request, or idle to make room at a full cap; so far.
    pub(super) evicted: u64,
    /// Bans in force, if the login layers were given.
    pub(super) banned: Option<usize>,
    /// The overload manager's pressure, if it was given.
    pub(super) pressure: Option<f64>,
}

impl Sources {
    pub(super) fn totals(&self) -> Totals {
        let mut refused = 0;
        let mut dry_run_refusals = 0;
        let mut evicted = 0;
        let live = self.connection_limit.as_ref().map(|limit| {
            let stats = limit.stats();
            refused += stats.refused;
            dry_run_refusals += stats.dry_run_refusals;
            stats.live
        });
        #[cfg(feature = "peer-limit")]
        if let Some(layer) = &self.peer_limit {
            let stats = layer.stats();
            refused += stats.refused_peer_limit + stats.refused_table_full;
            dry_run_refusals += stats.dry_run_refusals;
        }
        #[cfg(feature = "rate-limit")]
        if let Some(layer) = &self.rate_limit {
            let stats = layer.stats();
            refused +=
                stats.refused_peer_rate + stats.refused_global_rate + stats.refused_table_full;
            dry_run_refusals += stats.dry_run_refusals;
        }
        let banned = self.login.as_ref().map(|login| {
            let stats = login.stats();
            refused += stats.refused_banned + stats.refused_startups;
            dry_run_refusals += stats.dry_run_refusals;
            evicted += stats.evicted_after_failures
                + stats.evicted_login_timeout
                + stats.evicted_banned
                + stats.evicted_requested;
            login.bans().active()
        });
        #[cfg(feature = "overload")]
        let pressure = self.overload.as_ref().map(|overload| {
            let stats = overload.stats();
            evicted += stats.evicted_idle + stats.evicted_long_lived;
            stats.pressure
        });
        #[cfg(not(feature = "overload"))]
        let pressure = None;
        Totals {
            live,
            refused,
            dry_run_refusals,
            evicted,
            banned,
            pressure,
        }
    }
}

/// `GET /stats`: the totals, and each layer's own figures (`null` for a layer not
/// given).
pub(super) async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    shared.ensure_sampler();
    let sources = &shared.sources;
    let totals = sources.totals();
    let login = sources.login.as_ref().map(|login| {
        let stats = login.stats();
        json!({
            "sessions": stats.sessions,
            "authenticated": stats.authenticated,
            "failed_logins": stats.failed_logins,
            "evicted_after_failures": stats.evicted_after_failures,
            "evicted_login_timeout": stats.evicted_login_timeout,
            "evicted_banned": stats.evicted_banned,
            "evicted_requested": stats.evicted_requested,
            "bans_issued": stats.bans,
            "refused_banned": stats.refused_banned,
            "refused_startups": stats.refused_startups,
            "dry_run_refusals": stats.dry_run_refusals,
            "first_byte_timeouts": stats.first_byte_timeouts,
            "request_timeouts": stats.request_timeouts,
            "login_timeouts": stats.login_timeouts,
            "tls_handshake_timeouts": stats.tls_handshake_timeouts,
            "tls_handshake_failures": stats.tls_handshake_failures,
            "http_protocol_errors": stats.http_protocol_errors,
            "over_limit_refusals": stats.over_limit_refusals,
            "unauthenticated": stats.unauthenticated,
            "tracked_peers": stats.tracked_peers,
        })
    });
    let connection_limit = sources.connection_limit.as_ref().map(|layer| {
        let stats = layer.stats();
        json!({
            "admitted": stats.admitted,
            "refused": stats.refused,
            "dry_run_refusals": stats.dry_run_refusals,
            "live": stats.live,
            "limit": stats.limit,
        })
    });
    #[cfg(feature = "peer-limit")]
    let peer_limit = sources.peer_limit.as_ref().map(|layer| {
        let stats = layer.stats();
        json!({
            "admitted": stats.admitted,
            "exempt": stats.exempt,
            "untracked": stats.untracked,
            "refused_peer_limit": stats.refused_peer_limit,
            "refused_table_full": stats.refused_table_full,
            "dry_run_refusals": stats.dry_run_refusals,
            "tracked_peers": stats.tracked_peers,
        })
    });
    #[cfg(not(feature = "peer-limit"))]
    let peer_limit: Option<Value> = None;
    #[cfg(feature = "rate-limit")]
    let rate_limit = sources.rate_limit.as_ref().map(|layer| {
        let stats = layer.stats();
        json!({
            "admitted": stats.admitted,
            "exempt": stats.exempt,
            "untracked": stats.untracked,
            "refused_peer_rate": stats.refused_peer_rate,
            "refused_global_rate": stats.refused_global_rate,
            "refused_table_full": stats.refused_table_full,
            "dry_run_refusals": stats.dry_run_refusals,
            "tracked_peers": stats.tracked_peers,
        })
    });
    #[cfg(not(feature = "rate-limit"))]
    let rate_limit: Option<Value> = None;
    let timeouts = sources.timeouts.as_ref().map(|layer| {
        let stats = layer.stats();
        json!({
            "first_byte": stats.first_byte,
            "idle": stats.idle,
            "request": stats.request,
            "lifetime_wound_down": stats.lifetime_wound_down,
            "lifetime_cut": stats.lifetime_cut,
        })
    });
    #[cfg(feature = "overload")]
    let overload = sources.overload.as_ref().map(|overload| {
        let stats = overload.stats();
        json!({
            "pressure": stats.pressure,
            "connections": stats.connections,
            "descriptors": stats.descriptors,
            "memory": stats.memory,
            "monitors": stats.monitors,
            "evicted_idle": stats.evicted_idle,
            "evicted_long_lived": stats.evicted_long_lived,
            "registered": stats.registered,
            "seconds_under_pressure": stats.time_under_pressure.as_secs_f64(),
        })
    });
    #[cfg(not(feature = "overload"))]
    let overload: Option<Value> = None;
    json(
        StatusCode::OK,
        &json!({
            "uptime_seconds": shared.history.uptime().as_secs_f64(),
            "totals": totals.to_json(),
            "connection_limit": connection_limit,
            "peer_limit": peer_limit,
            "rate_limit": rate_limit,
            "login": login,
            "timeouts": timeouts,
            "overload": overload,
        }),
    )
}

impl Totals {
    pub(super) fn to_json(self) -> Value {
        json!({
            "live": self.live,
            "refused": self.refused,
            "dry_run_refusals": self.dry_run_refusals,
            "evicted": self.evicted,
            "banned": self.banned,
            "pressure": self.pressure,
        })
    }
}
