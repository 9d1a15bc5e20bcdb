//! `/bans`: list the bans in force, ban an address or a network, lift a ban.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::Response,
};
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::{Shared, error, json, missing};
use crate::{
    login::Bans,
    peer::{PeerKey, canonical_network},
};

/// The longest ban the page makes: a year.
const MAX_BAN_SECONDS: u64 = 365 * 24 * 3600;
/// The longest reason kept, in characters.
const MAX_REASON: usize = 200;
/// The longest target read, in bytes: an IPv6 network is at most 43.
const MAX_TARGET: usize = 64;
/// The most reasons remembered at once.
const MAX_REASONS: usize = 1024;
/// The most bans one `GET /bans` lists.
const MAX_LISTED: usize = 1000;
/// How far a ban's end may be from the end the page set for its reason still to be
/// shown: the same ban, read a moment later.
const SAME_BAN: Duration = Duration::from_secs(2);

/// `POST /bans`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BanRequest {
    /// An address (its peer key is banned) or a network.
    target: String,
    seconds: u64,
    reason: Option<String>,
}

/// The reasons given for the bans made here. The ban table knows no reasons, so a
/// reason is shown only while the ban it was given for is still the one in force:
/// lifted, or replaced by a ban of another length, it is no longer shown.
#[derive(Debug, Default)]
pub(super) struct Reasons(Mutex<HashMap<PeerKey, (String, Instant)>>);

impl Reasons {
    fn set(&self, key: PeerKey, reason: String, until: Instant) {
        let mut reasons = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if reasons.len() >= MAX_REASONS && !reasons.contains_key(&key) {
            let now = Instant::now();
            reasons.retain(|_, (_, until)| *until > now);
            if reasons.len() >= MAX_REASONS
                && let Some(soonest) = reasons
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(key, _)| *key)
            {
                reasons.remove(&soonest);
            }
        }
        reasons.insert(key, (reason, until));
    }

    fn forget(&self, key: &PeerKey) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// The reason for `key`'s ban, if it was made here and ends at `until`.
    fn of(&self, key: &PeerKey, until: Instant) -> Option<String> {
        let reasons = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (reason, set_until) = reasons.get(key)?;
        let apart = if *set_until > until {
            *set_until - until
        } else {
            until - *set_until
        };
        (apart <= SAME_BAN).then(|| reason.clone())
    }
}

fn bans(shared: &Shared) -> Option<Bans> {
    shared.sources.login.as_ref().map(|login| login.bans())
}

/// `GET /bans`: the bans in force, by target, at most 1000 of them (`total` says how
/// many there are).
pub(super) async fn list(State(shared): State<Arc<Shared>>) -> Response {
    let Some(bans) = bans(&shared) else {
        return missing("login layers", "login");
    };
    let now = Instant::now();
    let all = bans.list();
    let listed: Vec<_> = all
        .iter()
        .take(MAX_LISTED)
        .map(|ban| {
            json!({
                "target": ban.key.to_string(),
                "remaining_seconds": ban.remaining.as_secs_f64(),
                "offences": ban.offences,
                // A ban too long for the clock has no reason from here: the page's
                // bans are a year at most.
                "reason": now
                    .checked_add(ban.remaining)
                    .and_then(|until| shared.reasons.of(&ban.key, until)),
            })
        })
        .collect();
    json(
        StatusCode::OK,
        &json!({ "total": all.len(), "bans": listed }),
    )
}

/// `POST /bans`: bans `target` for `seconds`. The body must say it is JSON: a browser
/// sends a body of another type (a form, text) from any site without asking the page
/// first, and JSON only once the page has agreed, which it never does.
pub(super) async fn ban(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !is_json(&headers) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be `Content-Type: application/json`",
        );
    }
    let Some(bans) = bans(&shared) else {
        return missing("login layers", "login");
    };
    let request = match parse_request(&body) {
        Ok(request) => request,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let key = match bans.ban_key(request.target) {
        Ok(key) => key,
        Err(refused) => return error(StatusCode::BAD_REQUEST, refused),
    };
    let asked = canonical_network(request.target);
    let within = match exempt_within(&bans, asked, key.network()) {
        Exempt::Within(within) => within,
        Exempt::Whole(network) => {
            return error(
                StatusCode::CONFLICT,
                format_args!(
                    "{key} is in the exempt network {network} (`peers.exempt`): a ban on it \
                 would refuse nothing"
                ),
            );
        }
        Exempt::Asked(network) => {
            return error(
                StatusCode::CONFLICT,
                format_args!(
                    "{asked} is in the exempt network {network} (`peers.exempt`): a ban on \
                 its peer key {key} would refuse the rest of {key} and still let {asked} in"
                ),
            );
        }
    };
    let length = Duration::from_secs(request.seconds);
    if let Err(ban_error) = bans.ban_network(request.target, length) {
        return error(StatusCode::CONFLICT, ban_error);
    }
    match request.reason {
        Some(reason) => shared.reasons.set(key, reason, Instant::now() + length),
        None => shared.reasons.forget(&key),
    }
    let mut answer = json!({ "banned": key.to_string(), "seconds": request.seconds });
    if within.is_empty() {
        tracing::warn!(target: "tower_bouncer::admin", banned = %key, seconds = request.seconds, "banned from the admin page");
    } else {
        let within: Vec<_> = within.iter().map(ToString::to_string).collect();
        let listed = within.join(", ");
        tracing::warn!(target: "tower_bouncer::admin", banned = %key, seconds = request.seconds, exempt = %listed, "banned from the admin page, but for the exempt networks within it");
        answer["note"] = json!(format!(
            "the exempt networks within it ({listed}, `peers.exempt`) are still let in"
        ));
        answer["exempt"] = json!(within);
    }
    json(StatusCode::CREATED, &answer)
}

/// What of a ban's target is exempt: the ban check lets those peers in.
enum Exempt {
    /// All of the peer key (or network) the target widens to, as this exempt network
    /// holds it whole: a ban would refuse nobody.
    Whole(IpNet),
    /// The target asked for, held whole by this exempt network, narrower than the key
    /// the target widens to: a ban would refuse the key's other peers, never the
    /// target.
    Asked(IpNet),
    /// The exempt networks within the key, if any: the rest of it is refused.
    Within(Vec<IpNet>),
}

/// What of `asked`, widened to `banned` (which holds it), is exempt.
fn exempt_within(bans: &Bans, asked: IpNet, banned: IpNet) -> Exempt {
    let exempt = bans.exempt_networks();
    if let Some(holding) = exempt.iter().find(|network| network.contains(&banned)) {
        return Exempt::Whole(*holding);
    }
    if let Some(holding) = exempt.iter().find(|network| network.contains(&asked)) {
        return Exempt::Asked(*holding);
    }
    Exempt::Within(
        exempt
            .into_iter()
            .filter(|network| banned.contains(network))
            .collect(),
    )
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// `DELETE /bans/{target}`: lifts the ban on `target`, an address or a network.
pub(super) async fn unban(
    State(shared): State<Arc<Shared>>,
    Path(target): Path<String>,
) -> Response {
    let Some(bans) = bans(&shared) else {
        return missing("login layers", "login");
    };
    let target = match parse_target(&target) {
        Ok(target) => target,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let key = match bans.ban_key(target) {
        Ok(key) => key,
        Err(refused) => return error(StatusCode::BAD_REQUEST, refused),
    };
    shared.reasons.forget(&key);
    if !bans.unban_network(target) {
        return error(StatusCode::NOT_FOUND, format_args!("no ban on {key}"));
    }
    tracing::warn!(target: "tower_bouncer::admin", unbanned = %key, "ban lifted from the admin page");
    json(StatusCode::OK, &json!({ "unbanned": key.to_string() }))
}

/// A ban request checked: a target that parses, a length from a second to a year, a
/// short printable reason.
#[derive(Debug, PartialEq)]
struct Checked {
    target: IpNet,
    seconds: u64,
    reason: Option<String>,
}

fn parse_request(body: &[u8]) -> Result<Checked, String> {
    let request: BanRequest = serde_json::from_slice(body).map_err(|error| {
        format!(
            "the body must be JSON: {{\"target\": \"203.0.113.7\" or \"198.51.100.0/24\", \
             \"seconds\": 600, \"reason\": \"optional\"}}; {error}"
        )
    })?;
    let target = parse_target(&request.target)?;
    if !(1..=MAX_BAN_SECONDS).contains(&request.seconds) {
        return Err(format!(
            "`seconds` must be from 1 to {MAX_BAN_SECONDS} (a year), not {}",
            request.seconds
        ));
    }
    let reason = match request.reason.map(|reason| reason.trim().to_owned()) {
        Some(reason) if reason.chars().count() > MAX_REASON => {
            return Err(format!("`reason` must be at most {MAX_REASON} characters"));
        }
        Some(reason) if reason.chars().any(char::is_control) => {
            return Err("`reason` must hold no control characters".to_owned());
        }
        Some(reason) if reason.is_empty() => None,
        reason => reason,
    };
    Ok(Checked {
        target,
        seconds: request.seconds,
        reason,
    })
}

/// An address (`203.0.113.7`, `2001:db8::1`) or a network (`198.51.100.0/24`).
fn parse_target(target: &str) -> Result<IpNet, String> {
    let target = target.trim();
    let parsed = if target.len() > MAX_TARGET {
        None
    } else if target.contains('/') {
        target.parse::<IpNet>().ok()
    } else {
        target.parse::<IpAddr>().ok().map(IpNet::from)
    };
    parsed.ok_or_else(|| {
        let shown: String = target.chars().take(MAX_TARGET).collect();
        format!(
            "`target` must be an IP address or a network such as 198.51.100.0/24, not {shown:?}"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_request_parses_and_its_reason_is_trimmed() {
        let checked =
            parse_request(br#"{"target": "198.51.100.0/24", "seconds": 60, "reason": " scan "}"#)
                .unwrap();
        assert_eq!(
            checked,
            Checked {
                target: "198.51.100.0/24".parse().unwrap(),
                seconds: 60,
                reason: Some("scan".into()),
            }
        );
        let checked = parse_request(br#"{"target": "2001:db8::1", "seconds": 1}"#).unwrap();
        assert_eq!(checked.target, "2001:db8::1/128".parse::<IpNet>().unwrap());
        assert_eq!(checked.reason, None);
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let long_reason = format!(
            r#"{{"target": "192.0.2.1", "seconds": 60, "reason": "{}"}}"#,
            "x".repeat(MAX_REASON + 1)
        );
        for (body, says) in [
            ("", "must be JSON"),
            ("[]", "must be JSON"),
            (r#"{"target": "192.0.2.1"}"#, "missing field `seconds`"),
            (
                r#"{"target": "192.0.2.1", "seconds": 60, "secs": 1}"#,
                "unknown field `secs`",
            ),
            (r#"{"target": "192.0.2.1", "seconds": -1}"#, "invalid value"),
            (r#"{"target": "192.0.2.1", "seconds": 1.5}"#, "invalid type"),
            (r#"{"target": "192.0.2.1", "seconds": 0}"#, "from 1 to"),
            (
                r#"{"target": "192.0.2.1", "seconds": 99999999999}"#,
                "from 1 to",
            ),
            (
                r#"{"target": "example.com", "seconds": 60}"#,
                "must be an IP address",
            ),
            (
                r#"{"target": "192.0.2.0/33", "seconds": 60}"#,
                "must be an IP address",
            ),
            (
                r#"{"target": "192.0.2.1", "seconds": 60, "reason": "a\nb"}"#,
                "control",
            ),
            (&long_reason, "at most 200"),
        ] {
            let message = parse_request(body.as_bytes()).unwrap_err();
            assert!(message.contains(says), "{body}: {message}");
        }
    }

    #[test]
    fn a_long_target_is_quoted_short() {
        let message = parse_target(&"9".repeat(10_000)).unwrap_err();
        assert!(message.len() < 200, "{message}");
    }
}
