//! `cargo xtask` (through `./x`): set-up, run, test and benchmark Seqwatch.

mod bench;
mod demo;
mod image;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Seqwatch developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install whatever is missing: Debian packages (podman and Go among them), the pinned
    /// toolchains and the musl target, bpf-linker.
    Setup,
    /// Set up, build (release) and run the monitor on this host; extra arguments go to
    /// `seqwatch run` (see `seqwatch run --help`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run every check: fmt, clippy, unit and kernel tests, dashboards.
    Test,
    /// Set up, then measure the classifier's per-packet cost and the connection-rate overhead.
    Bench(bench::BenchArgs),
    /// Set up, then show a weak ISN generator flagged in the veth lab (under a minute).
    Demo,
    /// Set up, build the static (musl) binary and the container image localhost/seqwatch:<version>
    /// with podman (packaging/container/Containerfile).
    Image,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => {
            setup::ensure()?;
            setup::ensure_container_tools()
        }
        Task::Run { args } => run(&args),
        Task::Test => test(),
        Task::Bench(args) => {
            setup::ensure()?;
            bench::run(&args)
        }
        Task::Demo => {
            setup::ensure()?;
            demo::run()
        }
        Task::Image => {
            setup::ensure()?;
            setup::ensure_container_tools()?;
            image::build()
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<()> {
    setup::ensure()?;
    let binary = build_release()?;
    step(&format!(
        "start {} run {}",
        binary.display(),
        args.join(" ")
    ));
    let status = Command::new(&binary)
        .arg("run")
        .args(args)
        .status()
        .with_context(|| format!("starting {}", binary.display()))?;
    if !status.success() {
        bail!("seqwatch exited with {status}");
    }
    Ok(())
}

fn test() -> anyhow::Result<()> {
    setup::ensure()?;
    // tests/packaging.rs runs the image, tests/chart.rs renders the Helm chart with Go.
    setup::ensure_container_tools()?;
    setup::ensure_cargo_fuzz()?;
    step("cargo fmt --check");
    cargo(&["fmt", "--all", "--check"])?;
    step("cargo clippy -D warnings");
    cargo(&[
        "clippy",
        "--release",
        "--workspace",
        "--exclude",
        "seqwatch-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    step("cargo clippy -D warnings (eBPF crate, bpfel-unknown-none)");
    clippy_ebpf()?;
    step("container image (tests/packaging.rs runs it)");
    image::build()?;
    step("cargo test (unit tests, and kernel tests in network namespaces)");
    // Every test file runs even after one fails, so one CI run names every failure.
    cargo(&[
        "test",
        "--release",
        "--no-fail-fast",
        "--workspace",
        "--exclude",
        "seqwatch-ebpf",
    ])?;
    step(&format!(
        "cargo fuzz: the capture reader for {FUZZ_SECONDS} s"
    ));
    fuzz_captures()?;
    step("dashboards: promtool checks and rule tests, dashboard lint");
    run_checked(Command::new("bash").arg(workspace_root().join("dashboards/check.sh")))?;
    step("all checks passed");
    Ok(())
}

/// How long `./x test` fuzzes the capture reader: long enough to pass the formats' magic
/// numbers and framing from the seeds, short enough for every run.
const FUZZ_SECONDS: u32 = 60;

/// The capture reader and SYN-ACK parser under libFuzzer (fuzz/fuzz_targets/capture.rs), from
/// the seed captures in fuzz/seeds/capture. cargo-fuzz needs a nightly: the eBPF crate's. The
/// build goes beside bpf-linker's, outside the work tree, so a fresh clone rebuilds only
/// Seqwatch itself.
fn fuzz_captures() -> anyhow::Result<()> {
    let nightly = setup::ebpf_toolchain()?;
    let fuzz = workspace_root().join("fuzz");
    let corpus = fuzz.join("corpus/capture");
    std::fs::create_dir_all(&corpus)?;
    let mut command = Command::new("rustup");
    command
        .args(["run", &nightly, "cargo", "fuzz", "run", "capture"])
        .arg("--target-dir")
        .arg(setup::tools_dir(&nightly)?.join("fuzz-target"))
        .arg(&corpus)
        .arg(fuzz.join("seeds/capture"))
        .arg("--")
        .arg(format!("-max_total_time={FUZZ_SECONDS}"))
        // A slow input is a hang: the reader takes microseconds per input.
        .arg("-timeout=10")
        .current_dir(&fuzz)
        // The target reads captures only: no eBPF object is built (monitor/build.rs).
        .env("AYA_BUILD_SKIP", "1")
        .env_remove("RUSTC")
        .env_remove("CARGO");
    run_checked(&mut command)
}

/// The kernel crate only builds for BPF, with its own nightly and `-Z build-std`.
fn clippy_ebpf() -> anyhow::Result<()> {
    let nightly = setup::ebpf_toolchain()?;
    let mut command = Command::new("rustup");
    command
        .args(["run", &nightly, "cargo", "clippy", "--release"])
        .args(["--target", "bpfel-unknown-none"])
        .args(["-Z", "build-std=core", "--", "-D", "warnings"])
        .current_dir(workspace_root().join("monitor-ebpf"))
        .env("PATH", setup::path_with_tools()?)
        .env_remove("RUSTC")
        .env_remove("CARGO");
    run_checked(&mut command)
}

/// Builds the monitor in release mode and returns the binary's path.
pub fn build_release() -> anyhow::Result<PathBuf> {
    step("build the monitor (release)");
    cargo(&["build", "--release", "--package", "seqwatch"])?;
    Ok(workspace_root().join("target/release/seqwatch"))
}

/// Prints what is about to happen, so that a long run says where it is.
pub fn step(what: &str) {
    println!("==> {what}");
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs cargo in the workspace with bpf-linker on PATH.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    cargo_with_env(args, &[])
}

/// [`cargo`] with extra environment variables.
pub fn cargo_with_env(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .args(args)
        .current_dir(workspace_root())
        .env("PATH", setup::path_with_tools()?)
        .envs(env.iter().copied());
    run_checked(&mut command)
}

pub fn run_checked(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}
