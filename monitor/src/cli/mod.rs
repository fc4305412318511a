//! The command line: `seqwatch run|analyze|posture|check-config|version|completions|lab`, and
//! the exit codes.

use std::{io, path::PathBuf, process::ExitCode};

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use crate::{
    analyze::{self, AnalyzeArgs},
    daemon,
    host::posture::{self, PostureArgs},
    kernel::caps::KernelFeatures,
    lab::{self, LabArgs},
    settings::{self, ConfigError, RunArgs},
};

/// Exit status of a runtime failure; usage and configuration errors exit with 2.
const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "seqwatch",
    version,
    about = "eBPF network-hardening monitor: how guessable is each TCP service's ISN?",
    after_help = "Examples:
  seqwatch run                                  # every interface, egress, http://127.0.0.1:10045
  seqwatch run -i eth0 --direction both --listen 0.0.0.0:10045 --web-config web.yml
  seqwatch run --config /etc/seqwatch/seqwatch.toml
  seqwatch check-config /etc/seqwatch/seqwatch.toml
  seqwatch analyze --json capture.pcapng
  seqwatch posture                              # hardening sysctls against recommendations
  seqwatch completions bash > /etc/bash_completion.d/seqwatch

Exit codes:
  0  success
  1  runtime error (no privileges, kernel lacks BTF/tcx, missing interface, I/O)
  2  usage or configuration error (bad flag, bad config or web-config file);
     `analyze`: a capture was damaged (blocks skipped, or reading stopped at the damage)
  3  `posture`: at least one check is not as recommended"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load the probes, attach them, and serve /metrics until SIGINT/SIGTERM.
    /// Needs root or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON.
    Run(RunArgs),
    /// Score the ISN generators seen in pcap/pcapng captures.
    Analyze(AnalyzeArgs),
    /// Check the hardening sysctls of this host and network namespace against recommendations.
    Posture(PostureArgs),
    /// Validate a configuration file (and the web-config file it names); exit 2 if invalid.
    CheckConfig {
        /// The TOML configuration file.
        file: PathBuf,
    },
    /// Print the version and the kernel features seqwatch depends on.
    Version,
    /// Print a shell completion script to stdout.
    Completions { shell: clap_complete::Shell },
    /// Build the two-namespace veth lab, or run its weak ISN responder.
    Lab(LabArgs),
}

pub fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    let result = match cli.command {
        Command::Run(args) => run_daemon(&args),
        Command::Analyze(args) => analyze::run(args),
        Command::Posture(args) => posture::run(args),
        Command::CheckConfig { file } => check_config(file),
        Command::Version => version(),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "seqwatch", &mut io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Lab(args) => lab::run(args).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|err| {
        eprintln!("seqwatch: error: {err:#}");
        if err.is::<ConfigError>() {
            ExitCode::from(EXIT_CONFIG)
        } else {
            ExitCode::from(EXIT_RUNTIME)
        }
    })
}

fn run_daemon(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let settings = settings::resolve(args)?;
    // One thread: capabilities are per thread, and dropping them after attach must cover
    // every thread of the daemon (later ones inherit from this one).
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(daemon::run(settings))?;
    Ok(ExitCode::SUCCESS)
}

fn check_config(file: PathBuf) -> anyhow::Result<ExitCode> {
    settings::check_file(&file)?;
    println!("{}: OK", file.display());
    Ok(ExitCode::SUCCESS)
}

fn version() -> anyhow::Result<ExitCode> {
    let kernel = KernelFeatures::detect();
    let yes_no = |present: bool| if present { "yes" } else { "no" };
    println!("seqwatch {}", env!("CARGO_PKG_VERSION"));
    println!("kernel {}", kernel.release);
    println!("BTF (/sys/kernel/btf/vmlinux): {}", yes_no(kernel.btf));
    println!(
        "tcx (Linux 6.6+): {}{}",
        yes_no(kernel.tcx),
        if kernel.tcx {
            ""
        } else {
            " (netlink/clsact will be used)"
        }
    );
    Ok(ExitCode::SUCCESS)
}
