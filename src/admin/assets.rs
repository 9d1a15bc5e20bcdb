//! The dashboard: a page, a script and a style, served from the crate, with no data
//! in them (no token needed) and nothing fetched from anywhere else.

use axum::{
    extract::NestedPath,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};

const PAGE: &str = include_str!("dashboard.html");
const SCRIPT: &str = include_str!("dashboard.js");
const STYLE: &str = include_str!("dashboard.css");

/// Where the page's links start, written into its `<base>`.
const BASE: &str = "{{BASE}}";

/// `GET /`: the page, its links made to start where the router is mounted.
pub(super) async fn page(extensions: axum::http::Extensions) -> Response {
    // Nested (`Router::nest("/admin", ...)`), the routes are under that path, which
    // the page may be loaded from without its trailing slash; at the root, beside the
    // page.
    let base = match extensions.get::<NestedPath>() {
        Some(nested) => format!("{}/", nested.as_str().trim_end_matches('/')),
        None => "./".to_owned(),
    };
    let page = PAGE.replacen(BASE, &escape(&base), 1);
    asset("text/html; charset=utf-8", page)
}

/// `GET /dashboard.js`.
pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /dashboard.css`.
pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

fn asset(content_type: &'static str, body: impl IntoResponse) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// `text` made safe inside a double-quoted HTML attribute.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '"' => escaped.push_str("&quot;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_its_base_placeholder_once() {
        assert_eq!(PAGE.matches(BASE).count(), 1);
        assert_eq!(escape(r#"/a"<b>&"#), "/a&quot;&lt;b&gt;&amp;");
    }
}
