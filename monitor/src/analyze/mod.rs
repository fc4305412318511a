//! `seqwatch analyze`: score the ISN generators of the servers seen in pcap/pcapng captures,
//! with the same scorer the daemon runs live.

pub mod capture;
pub mod packet;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::scorer::{IsnObservation, ScorerConfig, ServiceReport, ServiceScorer, Verdict};
use capture::CaptureError;

/// Arguments of `seqwatch analyze`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Exit status: 0 when every file was read to the end, \
2 when a file was truncated or corrupt (results up to that point are still printed).")]
pub struct AnalyzeArgs {
    /// Print `{"services": [...]}` instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Guesses a blind attacker may spend on one ISN (for attack feasibility).
    #[arg(long, default_value_t = ScorerConfig::default().guesses)]
    pub guesses: u64,
    /// SYN-ACKs kept per service for the tests.
    #[arg(long, default_value_t = ScorerConfig::default().window)]
    pub window: usize,
    /// pcap or pcapng files, read in order as one stream per service.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// SYN-ACKs grouped by the server that sent them.
pub struct Analysis {
    config: ScorerConfig,
    services: BTreeMap<SocketAddr, ServiceScorer>,
}

impl Analysis {
    pub fn new(config: ScorerConfig) -> Self {
        Self {
            config,
            services: BTreeMap::new(),
        }
    }

    /// Feeds every SYN-ACK of one capture; on a bad block, what came before is kept.
    pub fn add_capture(&mut self, input: impl std::io::Read + Send) -> Result<u64, CaptureError> {
        read_frames_into(input, |obs| {
            self.services
                .entry(obs.server)
                .or_insert_with(|| ServiceScorer::new(&self.config))
                .ingest(&obs)
        })
    }

    pub fn reports(&mut self) -> Vec<ServiceReport> {
        self.services
            .iter_mut()
            .map(|(server, scorer)| scorer.report(&server.to_string()))
            .collect()
    }
}

/// Calls `on_synack` for every SYN-ACK in a capture.
pub fn read_frames_into(
    input: impl std::io::Read + Send,
    mut on_synack: impl FnMut(IsnObservation),
) -> Result<u64, CaptureError> {
    capture::read_frames(input, |frame| {
        if let Some(synack) = packet::parse_synack(frame.linktype, frame.data) {
            on_synack(IsnObservation {
                isn: synack.isn,
                ts_ns: frame.ts_ns,
                server: synack.server,
                client: synack.client,
                peer_isn: synack.peer_isn,
                options: synack.options,
                // Offline there is no host counter to say whether cookies were being sent.
                syncookies: false,
            });
        }
    })
}

pub fn run(args: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    let mut analysis = Analysis::new(ScorerConfig {
        guesses: args.guesses,
        window: args.window,
        ..ScorerConfig::default()
    });
    let mut damaged = false;
    for path in &args.files {
        if let Err(error) = add_file(&mut analysis, path)? {
            eprintln!(
                "seqwatch analyze: {}: {error}; results include the packets before it",
                path.display()
            );
            damaged = true;
        }
    }
    let reports = analysis.reports();
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &JsonOutput { services: &reports })?;
        writeln!(out)?;
    } else {
        write_table(&mut out, &reports)?;
    }
    Ok(if damaged {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// `analyze --json`: exactly `{"services": [ServiceReport...]}`, fields in declaration order.
#[derive(serde::Serialize)]
struct JsonOutput<'a> {
    services: &'a [ServiceReport],
}

fn format_probability(p: f64) -> String {
    match p {
        0.0 => "0".to_owned(),
        _ if p >= 1e-3 => format!("{p:.3}"),
        _ => format!("{p:.1e}"),
    }
}

/// Opening failures are errors; damage inside the capture is returned for reporting.
fn add_file(analysis: &mut Analysis, path: &Path) -> anyhow::Result<Result<u64, CaptureError>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(analysis.add_capture(BufReader::new(file)))
}

pub fn write_table(out: &mut impl Write, reports: &[ServiceReport]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<46} {:>8} {:<12} {:>10} {:>11}  nmap SP/GCD/ISR (difficulty)",
        "SERVICE", "SAMPLES", "VERDICT", "GUESS_BITS", "FEASIBILITY"
    )?;
    for report in reports {
        let verdict = match report.verdict {
            Verdict::Weak => "weak",
            Verdict::Strong => "strong",
            Verdict::Insufficient => "insufficient",
        };
        let bits = report.guess_bits.map_or("-".into(), |b| format!("{b:.1}"));
        let feasibility = report
            .attack_feasibility
            .map_or("-".into(), format_probability);
        let nmap = report.nmap.as_ref().map_or("-".into(), |n| {
            format!("{:X}/{:X}/{:X} ({})", n.sp, n.gcd, n.isr, n.difficulty)
        });
        writeln!(
            out,
            "{:<46} {:>8} {:<12} {:>10} {:>11}  {}",
            report.service, report.samples, verdict, bits, feasibility, nmap
        )?;
        for finding in &report.findings {
            writeln!(out, "    - [{:?}] {}", finding.severity, finding.message)?;
        }
    }
    Ok(())
}
