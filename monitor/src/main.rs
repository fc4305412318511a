use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "seqwatch", version, about = "eBPF network-hardening monitor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load the probes, attach them, and serve /metrics until SIGINT/SIGTERM.
    Run(seqwatch::daemon::RunArgs),
    /// Score the ISN generators seen in pcap/pcapng captures.
    Analyze(seqwatch::analyze::AnalyzeArgs),
    /// Build the two-namespace veth lab, or run its weak ISN responder.
    Lab(seqwatch::lab::LabArgs),
}

fn main() -> anyhow::Result<ExitCode> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Run(args) => run_daemon(args),
        Command::Analyze(args) => seqwatch::analyze::run(args),
        Command::Lab(args) => seqwatch::lab::run(args).map(|()| ExitCode::SUCCESS),
    }
}

fn run_daemon(args: seqwatch::daemon::RunArgs) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(seqwatch::daemon::run(args))?;
    Ok(ExitCode::SUCCESS)
}
