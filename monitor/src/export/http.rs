//! The HTTP endpoints: `/metrics`, a landing page, and the detectors' JSON endpoints
//! (`/api/v1/…`), behind the web config's TLS and basic auth ([`super::web`]).

use std::{fmt::Write as _, net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use axum::{
    Router,
    http::header,
    response::Html,
    routing::{MethodRouter, get},
};

use super::{
    metrics::Registry,
    web::{self, HttpMetrics, WebSecurity},
};

/// One JSON endpoint: its path, what it serves (for the landing page), and its handler.
struct Endpoint {
    path: &'static str,
    about: &'static str,
    handler: MethodRouter,
}

/// The detectors' endpoints, in the order they were added.
#[derive(Default)]
pub struct Api(Vec<Endpoint>);

impl Api {
    pub fn add(&mut self, path: &'static str, about: &'static str, handler: MethodRouter) {
        self.0.push(Endpoint {
            path,
            about,
            handler,
        });
    }
}

pub struct Server {
    pub local_addr: SocketAddr,
}

/// Binds at once (so a busy port is an error at start-up) and serves in the background,
/// behind the TLS and basic auth of the web config, if any, with as many connections at once
/// as the open-files limit leaves room for.
pub async fn serve(
    listen: SocketAddr,
    registry: Arc<Registry>,
    api: Api,
    security: &WebSecurity,
    http_metrics: HttpMetrics,
) -> anyhow::Result<Server> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (use --listen to pick another)"))?;
    let local_addr = listener.local_addr()?;
    let landing = Html(landing_page(&api));
    let metrics = move || {
        let text = registry.render();
        std::future::ready(([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text))
    };
    let mut app = Router::new()
        .route("/", get(move || std::future::ready(landing.clone())))
        .route("/metrics", get(metrics));
    for endpoint in api.0 {
        app = app.route(endpoint.path, endpoint.handler);
    }
    security.serve(listener, app, web::connection_cap(), http_metrics);
    Ok(Server { local_addr })
}

fn landing_page(api: &Api) -> String {
    let mut page = format!(
        "<!doctype html><html><head><title>Seqwatch</title></head><body>\
         <h1>Seqwatch {}</h1><p>eBPF network-hardening monitor: ISN predictability of every \
         service.</p><ul><li><a href=\"/metrics\">/metrics</a> (Prometheus)</li>",
        env!("CARGO_PKG_VERSION")
    );
    for endpoint in &api.0 {
        let _ = write!(
            page,
            "<li><a href=\"{0}\">{0}</a> ({1})</li>",
            endpoint.path, endpoint.about
        );
    }
    page.push_str("</ul></body></html>");
    page
}
