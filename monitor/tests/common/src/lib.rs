//! Shared parts of seqwatch's integration tests (monitor/tests/*.rs), by role: the real daemon
//! in a lab namespace ([`daemon`]), reading its /metrics ([`prometheus`]), a tcpdump capture of
//! the same interface ([`capture`]), traffic and per-namespace state in the lab ([`lab`]), TLS
//! sessions ([`tls`]), crafted frames through the classifiers with BPF_PROG_TEST_RUN
//! ([`test_run`]), the `seqwatch` binary as a command ([`cli`]), what /proc tells of processes
//! and cgroups ([`host`]), and a container as the host sees one ([`container`]).
//!
//! A library crate, not a `mod common;` in each test file: rustc lints each test file as a crate
//! of its own, so helpers that only some test files use were dead code in all the others; here
//! they are the public items of a library. The tests depend on it as `common` (a
//! dev-dependency of seqwatch), and it depends on the same `seqwatch` library as they do, so
//! `seqwatch::lab::Lab` and the rest are one type in both (an integration test links the one
//! library build that its dev-dependencies link too).

use std::{
    thread,
    time::{Duration, Instant},
};

pub mod capture;
pub mod cli;
pub mod container;
pub mod daemon;
pub mod host;
pub mod lab;
pub mod prometheus;
pub mod test_run;
pub mod tls;

/// Polls `done` every 50 ms until it holds or `limit` has passed; whether it held (it is asked
/// once more at the end).
pub fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    done()
}
