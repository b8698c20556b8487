//! `GET /console`: the web console, a page the controller serves itself so that an operator
//! needs no other service, no build step and no network beyond this listener (air-gapped hosts
//! included). Its files (`crates/controller/console/`) are hand-written HTML, CSS, one
//! dependency-free script and an icon, embedded in the binary.
//!
//! The page carries no secret, so it is served without the token; the operator types the
//! token into it and the script sends it on every API call. Every file goes out with a strict
//! Content-Security-Policy (scripts and styles from this origin only, no inline code, no
//! connection but to this origin, no framing), `nosniff` and no referrer.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppError;
use crate::controller::Controller;

const INDEX: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/console.js");
const STYLE: &str = include_str!("../../console/console.css");
const ICON: &str = include_str!("../../console/icon.svg");

/// The policy every console file is served with.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// Whether `path` is a console file (served without the token).
pub(super) fn is_public(path: &str) -> bool {
    path == "/console" || path.starts_with("/console/")
}

pub(super) fn router() -> Router<Controller> {
    Router::new()
        .route("/console", get(|| async { asset("") }))
        .route(
            "/console/{name}",
            get(|Path(name): Path<String>| async move { asset(&name) }),
        )
}

/// The console's file `name` (`""` is the page), or `404`.
fn asset(name: &str) -> Response {
    match name {
        "" | "index.html" => file("text/html; charset=utf-8", INDEX),
        "console.js" => file("text/javascript; charset=utf-8", SCRIPT),
        "console.css" => file("text/css; charset=utf-8", STYLE),
        "icon.svg" => file("image/svg+xml", ICON),
        _ => AppError::NoRoute.into_response(),
    }
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The files change with the binary; revalidate instead of serving a stale script.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ` onclick=` and the like.
    fn has_inline_handler(html: &str) -> bool {
        html.match_indices(" on").any(|(i, _)| {
            let rest = &html[i + 3..];
            let name = rest.len()
                - rest
                    .trim_start_matches(|c: char| c.is_ascii_lowercase())
                    .len();
            name > 0 && rest[name..].starts_with('=')
        })
    }

    #[test]
    fn public_paths_are_only_the_console() {
        assert!(is_public("/console"));
        assert!(is_public("/console/console.js"));
        assert!(!is_public("/consoles"));
        assert!(!is_public("/v1/events"));
        assert!(!is_public("/"));
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_has_no_inline_code() {
        for text in [INDEX, SCRIPT, STYLE, ICON] {
            for needle in ["http://", "https://", "//cdn", "@import", "url("] {
                // The SVG namespace is an identifier, not a request.
                let hits = text
                    .match_indices(needle)
                    .filter(|(i, _)| !text[*i..].starts_with("http://www.w3.org/2000/svg"))
                    .count();
                assert_eq!(hits, 0, "{needle} in a console file");
            }
        }
        assert!(!INDEX.contains("<script>"), "inline script");
        assert!(!INDEX.contains("<style"), "inline style");
        assert!(!INDEX.contains(" style="), "style attribute");
        assert!(!has_inline_handler(INDEX), "inline event handler");
        assert!(
            !SCRIPT.contains("innerHTML"),
            "the script builds nodes, never HTML text"
        );
        assert!(!SCRIPT.contains("eval("));
    }
}
