//! The bearer token every data route requires.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::Response,
};
use subtle::ConstantTimeEq;

use super::{Shared, error};
use crate::ConfigError;

/// A token that can be sent in an `Authorization` header.
pub(super) struct Token(Box<[u8]>);

impl Token {
    pub(super) fn new(token: String) -> Result<Self, ConfigError> {
        if !crate::config::is_bearer_token(&token) {
            return Err(ConfigError::Inconsistent {
                reason: "the admin token must be visible ASCII characters, at least one",
            });
        }
        Ok(Self(token.into_bytes().into_boxed_slice()))
    }

    /// Whether `headers` carry `Authorization: Bearer` with this token. The comparison
    /// takes as long whichever byte differs; only the token's length may show.
    fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| bearer(value.as_bytes()))
        else {
            return false;
        };
        bool::from(given.ct_eq(&self.0))
    }
}

/// The credentials of a `Bearer` authorization (the scheme in any case).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    let scheme = value.get(..SCHEME.len())?;
    scheme
        .eq_ignore_ascii_case(SCHEME)
        .then(|| value[SCHEME.len()..].trim_ascii())
}

/// Lets a request through only with the token, if the page has one; without one, only
/// to a host named as this machine.
pub(super) async fn require_token(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    match &shared.token {
        Some(token) if !token.admits(request.headers()) => {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "this route needs `Authorization: Bearer TOKEN` with the admin token",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"admin\""),
            );
            response
        }
        // A site whose name was made to resolve to this machine (DNS rebinding) is
        // same-origin with the page: only the name it asks for tells it apart.
        None if !names_this_machine(&request) => error(
            StatusCode::FORBIDDEN,
            "served without a token, the page answers only to `localhost` or an IP address",
        ),
        _ => next.run(request).await,
    }
}

/// Whether the request's host is `localhost` or an IP address, or it names none.
fn names_this_machine(request: &Request) -> bool {
    let host = match request.headers().get(header::HOST) {
        Some(host) => match host.to_str() {
            Ok(host) => host,
            Err(_) => return false,
        },
        None => match request.uri().host() {
            Some(host) => host,
            None => return true,
        },
    };
    let name = match host.strip_prefix('[') {
        // `[::1]:9000`: the address inside the brackets.
        Some(bracketed) => bracketed.split_once(']').map_or("", |(address, _)| address),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(authorization).unwrap(),
        );
        headers
    }

    #[test]
    fn only_the_exact_token_as_a_bearer_is_admitted() {
        let token = Token::new("s3cret-token".into()).unwrap();
        assert!(token.admits(&headers("Bearer s3cret-token")));
        assert!(token.admits(&headers("bearer  s3cret-token ")));
        for wrong in [
            "Bearer s3cret-tokeN",
            "Bearer s3cret-token2",
            "Bearer s3cret",
            "Bearer ",
            "Basic s3cret-token",
            "s3cret-token",
            "Bearers3cret-token",
        ] {
            assert!(!token.admits(&headers(wrong)), "{wrong}");
        }
        assert!(!token.admits(&HeaderMap::new()));
    }

    #[test]
    fn only_localhost_and_ip_addresses_name_this_machine() {
        let named = |host: &str| {
            names_this_machine(
                &Request::builder()
                    .header(header::HOST, host)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
        };
        for local in [
            "localhost",
            "LocalHost:9000",
            "127.0.0.1",
            "127.0.0.1:9000",
            "[::1]:9000",
            "[::1]",
            "10.0.0.5:9000",
        ] {
            assert!(named(local), "{local}");
        }
        for foreign in [
            "evil.example",
            "evil.example:9000",
            "localhost.evil.example",
            "127.0.0.1.evil.example:9000",
            "[::1.evil]:9000",
            "",
        ] {
            assert!(!named(foreign), "{foreign}");
        }
    }

    #[test]
    fn a_token_that_no_header_can_carry_is_refused() {
        for bad in ["", "two words", "tab\there", "é"] {
            assert!(Token::new(bad.into()).is_err(), "{bad:?}");
        }
    }
}
