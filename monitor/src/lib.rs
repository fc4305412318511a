//! Seqwatch: an eBPF network-hardening monitor. The binary (`src/main.rs`) runs [`cli`]; tests
//! and benchmarks use the modules directly. The layers, top down (each uses only those below
//! it; docs/architecture.md): `cli`; `daemon`; `detectors`; `settings`; `kernel`, `export`,
//! `host`, `scorer`; `util`. `analyze` and `lab` are subcommands beside the daemon.

pub mod analyze;
pub mod cli;
pub mod daemon;
pub mod detectors;
pub mod export;
pub mod host;
pub mod kernel;
pub mod lab;
pub mod scorer;
pub mod settings;
pub mod util;
