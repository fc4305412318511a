//! What following the host's other network namespaces costs (`--netns all`): the daemon in the
//! lab's server namespace beside [`NAMESPACES`] namespaces the bench makes, each with a
//! listener, against the same daemon with `--netns self`, in alternating rounds. Each round
//! starts a daemon, waits until it follows every namespace (or serves, for `self`), lets it
//! settle, then reports its CPU time over [`WINDOW`] (its threads' schedstat, as % of one core)
//! and its resident memory (VmRSS) at the end; the summary gives the medians. Needs root. Run
//! by `./x bench`; `SEQWATCH_BENCH_ROUNDS` sets the rounds per side, and
//! `SEQWATCH_BENCH_BEFORE=PATH` adds the same two setups run by another build of the daemon.

use std::{
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{
    container::ListeningNamespaces,
    daemon::scrape,
    host::{cpu_time, rss_bytes},
    prometheus::series_value,
};
use seqwatch::lab::{Lab, LabOptions};

/// Namespaces made beside the daemon's, each with one listener.
const NAMESPACES: usize = 100;
const PORT: u16 = 8080;
/// After the daemon follows them all: its first rescans name the namespaces and their owners.
const SETTLE: Duration = Duration::from_secs(5);
const WINDOW: Duration = Duration::from_secs(10);

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::var("SEQWATCH_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let lab = Lab::create(&LabOptions::default())?;
    let namespaces = ListeningNamespaces::create(&lab, NAMESPACES, PORT);
    let before = std::env::var("SEQWATCH_BENCH_BEFORE").ok();
    let mut setups = vec![
        ("self", env!("CARGO_BIN_EXE_seqwatch").to_owned(), "self"),
        ("all", env!("CARGO_BIN_EXE_seqwatch").to_owned(), "all"),
    ];
    if let Some(before) = before {
        setups.push(("before self", before.clone(), "self"));
        setups.push(("before all", before, "all"));
    }
    println!(
        "daemon beside {} namespaces with a listener each ({rounds} alternating rounds, CPU over {WINDOW:?})",
        namespaces.names.len()
    );
    let mut results = vec![Vec::new(); setups.len()];
    for round in 0..rounds {
        let mut line = format!("round {round}:");
        for slot in 0..setups.len() {
            // The order rotates each round, so that a drift within a round favours no setup.
            let setup = (slot + round) % setups.len();
            let (name, daemon, mode) = &setups[setup];
            let result = measure(&lab, daemon, mode)?;
            line += &format!("   {name} {result}");
            results[setup].push(result);
        }
        println!("{line}");
    }
    for ((name, _, _), mut results) in setups.iter().zip(results) {
        let cpu = median(results.iter_mut().map(|r| r.cpu_percent).collect());
        let rss = median(results.iter_mut().map(|r| r.rss_mib).collect());
        let followed = results.iter().map(|r| r.followed).max().unwrap_or_default();
        println!(
            "{name:>12}: median {cpu:.2} % of a core, {rss:.1} MiB resident, {followed} namespaces followed"
        );
    }
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One round of one setup.
#[derive(Clone)]
struct Measured {
    cpu_percent: f64,
    rss_mib: f64,
    followed: u64,
}

impl std::fmt::Display for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2} % {:.1} MiB", self.cpu_percent, self.rss_mib)
    }
}

fn measure(lab: &Lab, daemon: &str, mode: &str) -> anyhow::Result<Measured> {
    let mut child = lab
        .command_in(&lab.server_ns, daemon)
        .args(["run", "--interface", &lab.server_if, "--netns", mode])
        .stderr(Stdio::null())
        .spawn()?;
    let result = measure_running(lab, &child, mode);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    result
}

fn measure_running(lab: &Lab, child: &Child, mode: &str) -> anyhow::Result<Measured> {
    let wanted = if mode == "all" {
        NAMESPACES as f64
    } else {
        0.0
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let followed = loop {
        let metrics = scrape(lab, &lab.server_ns);
        // Absent with `self`: 0.
        let followed = metrics
            .as_deref()
            .map(|text| series_value(text, "seqwatch_netns_followed").unwrap_or_default());
        if followed.is_some_and(|followed| followed >= wanted) {
            break followed.unwrap_or_default();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the daemon did not follow the namespaces"
        );
        thread::sleep(Duration::from_millis(200));
    };
    thread::sleep(SETTLE);
    let before = cpu_time(child.id())?;
    thread::sleep(WINDOW);
    let cpu = cpu_time(child.id())? - before;
    Ok(Measured {
        cpu_percent: 100.0 * cpu.as_secs_f64() / WINDOW.as_secs_f64(),
        rss_mib: rss_bytes(child.id()) as f64 / f64::from(1 << 20),
        followed: followed as u64,
    })
}
