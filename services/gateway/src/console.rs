//! The web console at `/`: one page (console.html, compiled in: no build
//! step, nothing fetched from elsewhere) that signs in with an API key and
//! calls the same REST API as every other client, with that key. The page
//! itself needs no key; everything it shows comes through the API.

use axum::response::{IntoResponse, Response};

/// Where the console is served.
pub const PATH: &str = "/";

const PAGE: &str = include_str!("console.html");

/// The console page.
pub fn page() -> Response {
    (
        [
            (http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Scripts and styles from the page itself only; it calls this origin only.
            (
                http::header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; \
                 img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
            ),
            (http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE,
    )
        .into_response()
}
