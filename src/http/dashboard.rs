//! The built-in live dashboard: `GET /` (and `/dashboard`) on the metrics
//! address serves a page that draws where reads run and why, read waits,
//! replica lag and health, connections, errors and the causal map's size,
//! refreshed every second.
//!
//! The page, its stylesheet and its scripts are compiled into the binary
//! (`include_str!`) and hand-written, with no chart library: nothing is
//! fetched from anywhere but this server, and the Content-Security-Policy
//! sent with the page lets the browser load and fetch from its own origin
//! only, so the dashboard works offline and behind any firewall.
//!
//! The page reads `/metrics`, the Prometheus text, rather than a JSON
//! endpoint of its own, because:
//! - it shows the numbers Prometheus and Grafana see, under the same names
//!   and with the same definition of a read (`reason` neither `write` nor
//!   `transaction`); a metric added for Grafana is there for the page too,
//!   and there is no second serialisation of the state to keep in step;
//! - nothing new runs in the proxy: no sampler task and no history; rates
//!   and quantiles are computed in the browser from successive scrapes, as
//!   PromQL's `rate()` and `histogram_quantile()` compute them. A watching
//!   page costs one render of the registry per second, the work of one
//!   Prometheus scrape; a closed page, or one in a hidden tab (it stops
//!   polling), costs nothing.

use axum::http::header::{self, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The page: markup only; everything it needs is in [`ASSETS`].
const PAGE: &str = include_str!("dashboard/index.html");

/// What the page loads, by path: content type and text.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "/dashboard/style.css",
        "text/css; charset=utf-8",
        include_str!("dashboard/style.css"),
    ),
    (
        "/dashboard/prometheus.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/prometheus.js"),
    ),
    (
        "/dashboard/chart.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/chart.js"),
    ),
    (
        "/dashboard/app.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/app.js"),
    ),
];

/// Same origin for everything; `data:` only for the empty favicon.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes, to merge into the metrics server's router.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let page = || async { asset("text/html; charset=utf-8", PAGE) };
    let mut router = Router::new()
        .route("/", get(page))
        .route("/dashboard", get(page));
    for &(path, content_type, text) in ASSETS {
        router = router.route(path, get(move || async move { asset(content_type, text) }));
    }
    router
}

fn asset(content_type: &'static str, text: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        // Always revalidated, so a new causeway's page is never mixed with
        // an old one's scripts.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    (headers, text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values of `attribute="..."` in `html`.
    fn attribute_values<'a>(html: &'a str, attribute: &str) -> Vec<&'a str> {
        let needle = format!("{attribute}=\"");
        html.match_indices(&needle)
            .filter_map(|(at, _)| {
                let rest = &html[at + needle.len()..];
                rest.find('"').map(|end| &rest[..end])
            })
            .collect()
    }

    #[test]
    fn every_file_the_page_loads_is_served() {
        let mut loaded = attribute_values(PAGE, "src");
        loaded.extend(
            attribute_values(PAGE, "href")
                .into_iter()
                .filter(|href| !href.starts_with("data:") && *href != "/metrics"),
        );
        assert!(loaded.len() >= ASSETS.len(), "{loaded:?}");
        for path in loaded {
            assert!(
                ASSETS.iter().any(|(served, _, _)| *served == path),
                "the page loads {path}, which is not served"
            );
        }
    }

    #[test]
    fn nothing_names_another_origin() {
        // The SVG namespace is a name, not an address anything fetches.
        let namespace = "http://www.w3.org/2000/svg";
        for (path, _, text) in ASSETS.iter().copied().chain([("/", "", PAGE)]) {
            let text = text.replace(namespace, "");
            for outside in ["http:", "https:", "ws:", "wss:", "\"//", "'//", "@import"] {
                assert!(
                    !text.contains(outside),
                    "{path} contains {outside:?}: the dashboard must load nothing from elsewhere"
                );
            }
        }
    }

    #[test]
    fn the_page_reads_only_this_servers_metrics() {
        let app = ASSETS
            .iter()
            .find(|(path, _, _)| *path == "/dashboard/app.js")
            .map(|(_, _, text)| *text)
            .unwrap_or_default();
        let fetches: Vec<&str> = app
            .match_indices("fetch(")
            .map(|(at, _)| &app[at..])
            .collect();
        assert_eq!(fetches.len(), 1, "app.js should fetch in one place");
        assert!(
            fetches[0].starts_with("fetch(\"/metrics\""),
            "{}",
            &fetches[0][..40]
        );
    }
}
