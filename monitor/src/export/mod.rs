//! What leaves the daemon: the metric registry, the HTTP server and its security (TLS, basic
//! auth, connection limits), the event log, and the `service` labels every detector's metrics
//! carry under one policy.

pub mod event_log;
pub mod http;
pub mod labels;
pub mod metrics;
pub mod web;
