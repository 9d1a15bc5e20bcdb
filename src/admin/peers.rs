//! `GET /peers`: the top peers by live connections, by recent offences and by past
//! bans.

use std::sync::Arc;

use axum::{
    extract::{RawQuery, State},
    http::StatusCode,
    response::Response,
};
use serde_json::{Value, json};

use super::{Shared, error, json};
use crate::login::{Offender, OffenderRank};

/// How many peers each list holds unless `?top=N` says otherwise.
const DEFAULT_TOP: usize = 20;
/// The most `?top=N` may ask for.
const MAX_TOP: usize = 100;

/// `GET /peers[?top=N]`: each list is `null` when its layer was not given.
pub(super) async fn peers(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
) -> Response {
    let top = match parse_top(query.as_deref()) {
        Ok(top) => top,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let sources = &shared.sources;
    #[cfg(feature = "peer-limit")]
    let by_connections = sources.peer_limit.as_ref().map(|layer| {
        layer
            .top_peers(top)
            .iter()
            .map(|peer| json!({ "peer": peer.key.to_string(), "connections": peer.connections }))
            .collect::<Vec<_>>()
    });
    #[cfg(not(feature = "peer-limit"))]
    let by_connections: Option<Vec<Value>> = None;
    let offenders = |rank| {
        sources.login.as_ref().map(|login| {
            login
                .bans()
                .top_offenders(top, rank)
                .iter()
                .map(offender)
                .collect::<Vec<_>>()
        })
    };
    json(
        StatusCode::OK,
        &json!({
            "by_connections": by_connections,
            "by_offences": offenders(OffenderRank::Offences),
            "by_bans": offenders(OffenderRank::Bans),
        }),
    )
}

fn offender(offender: &Offender) -> Value {
    json!({
        "peer": offender.key.to_string(),
        "toward_ban": offender.toward_ban,
        "bans": offender.bans,
        "banned_seconds": offender.banned_for.map(|left| left.as_secs_f64()),
    })
}

/// `top=N` from the query, if there is one: 1 to 100.
fn parse_top(query: Option<&str>) -> Result<usize, String> {
    let mut top = DEFAULT_TOP;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "top" {
            return Err(format!(
                "the only query parameter is `top`, not {:?}",
                shortened(name)
            ));
        }
        top = value
            .parse()
            .ok()
            .filter(|top| (1..=MAX_TOP).contains(top))
            .ok_or_else(|| {
                format!(
                    "`top` must be from 1 to {MAX_TOP}, not {:?}",
                    shortened(value)
                )
            })?;
    }
    Ok(top)
}

/// Untrusted text as an error quotes it: its first 32 characters.
fn shortened(text: &str) -> String {
    text.chars().take(32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_is_read_from_the_query_and_checked() {
        assert_eq!(parse_top(None), Ok(DEFAULT_TOP));
        assert_eq!(parse_top(Some("")), Ok(DEFAULT_TOP));
        assert_eq!(parse_top(Some("top=5")), Ok(5));
        for bad in ["top=0", "top=101", "top=x", "top", "other=1"] {
            assert!(parse_top(Some(bad)).is_err(), "{bad}");
        }
    }
}
