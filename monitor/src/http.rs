//! /metrics, a landing page, /api/v1/services (the scorer's per-service JSON) and
//! /api/v1/anomalies/top-sources (the sources with the most anomalies per kind).
//! /api/v1/owners (listener health and who holds the shared resources).

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use axum::{
    Json, Router,
    extract::State,
    http::header,
    response::{Html, IntoResponse},
    routing::get,
};

use crate::{
    daemon::Shared,
    util::{clock::monotonic_ns, lock},
    web::{self, WebSecurity},
};

pub struct Server {
    pub local_addr: SocketAddr,
}

/// Binds at once (so a busy port is an error at start-up) and serves in the background,
/// behind the TLS and basic auth of the web config, if any, with as many connections at once
/// as the open-files limit leaves room for.
pub async fn serve(
    listen: SocketAddr,
    shared: Arc<Shared>,
    security: &WebSecurity,
) -> anyhow::Result<Server> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (use --listen to pick another)"))?;
    let local_addr = listener.local_addr()?;
    let http_metrics = shared.metrics.http.clone();
    let app = Router::new()
        .route("/", get(landing))
        .route("/metrics", get(metrics))
        .route("/api/v1/services", get(services))
        .route("/api/v1/anomalies/top-sources", get(top_sources))
        .route("/api/v1/owners", get(owners))
        .with_state(shared);
    security.serve(listener, app, web::connection_cap(), http_metrics);
    Ok(Server { local_addr })
}

async fn landing() -> Html<&'static str> {
    Html(concat!(
        "<!doctype html><html><head><title>Seqwatch</title></head><body>",
        "<h1>Seqwatch ",
        env!("CARGO_PKG_VERSION"),
        "</h1><p>eBPF network-hardening monitor: ISN predictability of every service.</p>",
        "<ul><li><a href=\"/metrics\">/metrics</a> (Prometheus)</li>",
        "<li><a href=\"/api/v1/services\">/api/v1/services</a> (per-service ISN scores, JSON)</li>",
        "<li><a href=\"/api/v1/anomalies/top-sources\">/api/v1/anomalies/top-sources</a> ",
        "(top anomaly sources per kind, JSON)</li>",
        "<li><a href=\"/api/v1/owners\">/api/v1/owners</a> (listeners, and who holds sockets and ports, JSON)</li>",
        "</ul></body></html>"
    ))
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        shared.metrics.render(&shared.counters),
    )
}

async fn services(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let services = shared
        .services
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .reports();
    Json(serde_json::json!({ "services": services }))
}

async fn top_sources(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(lock(&shared.top_sources).report(monotonic_ns()))
}

async fn owners(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(lock(&shared.owners).clone())
}
