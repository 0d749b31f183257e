//! The web page at `/`: plain HTML, CSS and JavaScript compiled into the binary, with no
//! build step and nothing fetched from elsewhere (it works offline). It uses the public
//! HTTP API only: the REST routes for knowledge bases and documents, the streamed chat
//! completion for questions, and the fine-tuning jobs (`tune.js`, its own panel).

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::HttpState;

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const STYLE_CSS: &str = include_str!("page/style.css");
const TUNE_JS: &str = include_str!("page/tune.js");

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The page changes with the binary: always revalidate.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/tune.js",
            get(|| async { asset("text/javascript; charset=utf-8", TUNE_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_fetches_nothing_from_elsewhere() {
        for asset in [INDEX_HTML, APP_JS, STYLE_CSS, TUNE_JS] {
            assert!(!asset.contains("http://"), "an absolute URL in the page");
            assert!(!asset.contains("https://"), "an absolute URL in the page");
        }
        assert!(INDEX_HTML.contains("/app.js") && INDEX_HTML.contains("/style.css"));
        assert!(INDEX_HTML.contains("/tune.js"));
    }
}
