//! The connection a request came on, in the request as one extension.

use std::sync::Arc;

use http::Extensions;

use super::request::RequestTiming;
#[cfg(feature = "login")]
use crate::login::LoginSession;
use crate::{ConnInfo, GracefulClose};

/// The connection a request came on: its addresses, its [`GracefulClose`], its
/// [`LoginSession`](crate::login::LoginSession), and every extension the
/// connection-level layers left in its [`Conn`](crate::Conn) (a
/// [`TlsInfo`](crate::tls::TlsInfo), a [`ProxiedBy`](crate::proxy_protocol::ProxiedBy),
/// or one of your own).
///
/// [`HttpService`](super::HttpService) puts one in every request's extensions. It is
/// one extension, not one per handle, because it is cloned into every request: a
/// clone is one reference count, where each extension of its own would be an
/// allocation per request.
///
/// With the `axum` feature it is an extractor (`Option<ConnExtensions>` too), and so
/// are the connection's [`GracefulClose`] and its
/// [`LoginSession`](crate::login::LoginSession):
///
/// ```
/// use axum::{Router, routing::get};
/// use tower_bouncer::http::{ConnExtensions, HttpService};
///
/// async fn logout(conn: ConnExtensions) -> String {
///     conn.graceful_close().request();
///     format!("bye, {}\n", conn.info().peer_addr)
/// }
///
/// let app: Router = Router::new().route("/logout", get(logout));
/// let service = HttpService::new(app);
/// # let _ = service;
/// ```
///
/// Elsewhere (tonic, hyper), read it from the request:
/// `request.extensions().get::<ConnExtensions>()`.
#[derive(Debug, Clone)]
pub struct ConnExtensions(Arc<Shared>);

/// One allocation per connection, shared by the handlers and the adapter.
#[derive(Debug)]
struct Shared {
    info: ConnInfo,
    close: GracefulClose,
    #[cfg(feature = "login")]
    login: Option<LoginSession>,
    extensions: Extensions,
    /// The adapter's own: how it times the connection's requests.
    timing: RequestTiming,
}

impl ConnExtensions {
    pub(super) fn new(mut parts: crate::Parts, timing: RequestTiming) -> Self {
        Self(Arc::new(Shared {
            info: ConnInfo {
                peer_addr: parts.peer_addr,
                local_addr: parts.local_addr,
            },
            close: parts.graceful_close(),
            #[cfg(feature = "login")]
            login: parts.login,
            extensions: parts.extensions,
            timing,
        }))
    }

    pub(super) fn timing(&self) -> &RequestTiming {
        &self.0.timing
    }

    /// The connection's addresses.
    pub fn info(&self) -> ConnInfo {
        self.0.info
    }

    /// The connection's graceful close: request it to end the connection after the
    /// response (HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY).
    pub fn graceful_close(&self) -> &GracefulClose {
        &self.0.close
    }

    /// The connection's login session, if a
    /// [`SessionLayer`](crate::login::SessionLayer) opened one.
    #[cfg(feature = "login")]
    pub fn login_session(&self) -> Option<&LoginSession> {
        self.0.login.as_ref()
    }

    /// The extension of type `T` a connection-level layer left, if any.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.0.extensions.get()
    }
}

#[cfg(feature = "axum")]
mod extract {
    use axum::{
        extract::{FromRequestParts, OptionalFromRequestParts},
        http::{StatusCode, request::Parts},
    };

    use super::ConnExtensions;
    use crate::GracefulClose;

    /// Not served by the adapter: a server mistake, answered as axum answers a missing
    /// `Extension`.
    const MISSING: (StatusCode, &str) = (
        StatusCode::INTERNAL_SERVER_ERROR,
        "no ConnExtensions: the request was not served by tower-bouncer's HttpService",
    );

    impl<S: Send + Sync> FromRequestParts<S> for ConnExtensions {
        type Rejection = (StatusCode, &'static str);

        async fn from_request_parts(
            parts: &mut Parts,
            _state: &S,
        ) -> Result<Self, Self::Rejection> {
            parts.extensions.get::<Self>().cloned().ok_or(MISSING)
        }
    }

    /// The connection's graceful close, for a handler that ends the connection after
    /// its response.
    impl<S: Send + Sync> FromRequestParts<S> for GracefulClose {
        type Rejection = (StatusCode, &'static str);

        async fn from_request_parts(
            parts: &mut Parts,
            _state: &S,
        ) -> Result<Self, Self::Rejection> {
            let conn = parts.extensions.get::<ConnExtensions>().ok_or(MISSING)?;
            Ok(conn.graceful_close().clone())
        }
    }

    impl<S: Send + Sync> OptionalFromRequestParts<S> for ConnExtensions {
        type Rejection = std::convert::Infallible;

        async fn from_request_parts(
            parts: &mut Parts,
            _state: &S,
        ) -> Result<Option<Self>, Self::Rejection> {
            Ok(parts.extensions.get::<Self>().cloned())
        }
    }
}

#[cfg(all(test, feature = "axum"))]
mod tests {
    use axum::{Router, body::Body, routing::get};
    use http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    fn app() -> Router {
        Router::new()
            .route(
                "/",
                get(|conn: ConnExtensions| async move { conn.info().peer_addr.to_string() }),
            )
            .route(
                "/bye",
                get(|close: GracefulClose| async move {
                    close.request();
                    "bye"
                }),
            )
            .route(
                "/maybe",
                get(|conn: Option<ConnExtensions>| async move { conn.is_some().to_string() }),
            )
    }

    async fn get_body(request: Request<Body>) -> (StatusCode, String) {
        let response = app().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    fn request(path: &str, conn: Option<ConnExtensions>) -> Request<Body> {
        let mut request = Request::get(path).body(Body::empty()).unwrap();
        if let Some(conn) = conn {
            request.extensions_mut().insert(conn);
        }
        request
    }

    fn conn() -> ConnExtensions {
        let mut conn = crate::Conn::new(
            (),
            "192.0.2.7:40000".parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap(),
        );
        conn.extensions_mut().insert(7u32);
        let (_, parts) = conn.into_parts();
        ConnExtensions::new(parts, RequestTiming::default())
    }

    #[tokio::test]
    async fn handlers_extract_the_connection_or_learn_it_is_missing() {
        assert_eq!(
            get_body(request("/", Some(conn()))).await,
            (StatusCode::OK, "192.0.2.7:40000".to_owned())
        );
        let closing = conn();
        assert_eq!(
            get_body(request("/bye", Some(closing.clone()))).await,
            (StatusCode::OK, "bye".to_owned())
        );
        assert!(closing.graceful_close().is_requested());
        let (status, body) = get_body(request("/bye", None)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("HttpService"), "{body}");
        let (status, body) = get_body(request("/", None)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("HttpService"), "{body}");
        assert_eq!(
            get_body(request("/maybe", Some(conn()))).await,
            (StatusCode::OK, "true".to_owned())
        );
        assert_eq!(
            get_body(request("/maybe", None)).await,
            (StatusCode::OK, "false".to_owned())
        );
    }

    #[test]
    fn clones_share_the_connections_handles() {
        let conn = conn();
        let clone = conn.clone();
        assert_eq!(clone.get::<u32>(), Some(&7));
        assert_eq!(clone.get::<u64>(), None);
        clone.graceful_close().request();
        assert!(conn.graceful_close().is_requested());
    }
}
