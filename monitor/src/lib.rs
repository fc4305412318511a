//! Seqwatch: an eBPF network-hardening monitor. The binary (`src/main.rs`) is a thin CLI over
//! these modules, which tests and benchmarks use directly.

pub mod admission;
pub mod analyze;
pub mod caps;
pub mod clsact;
pub mod config;
pub mod crash;
pub mod daemon;
pub mod event_reader;
pub mod handshake;
pub mod host;
pub mod http;
pub mod interfaces;
pub mod kernel_btf;
pub mod lab;
pub mod listener_counts;
pub mod listeners;
pub mod metrics;
pub mod probes;
pub mod scorer;
pub mod silence;
pub mod spoofing;
pub mod synack;
pub mod tcp_events;
pub mod tls;
pub mod top_sources;
pub mod util;
pub mod web;
