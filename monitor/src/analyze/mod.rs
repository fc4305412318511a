//! `seqwatch analyze`: score the ISN generators of the servers seen in pcap/pcapng captures,
//! with the same scorer the daemon runs live.

pub mod capture;
pub mod packet;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::io::{BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::scorer::{IsnObservation, ScorerConfig, ServiceReport, ServiceScorer, Verdict};
use crate::settings;
use capture::{Capture, CaptureError, Skipped};

/// Servers beyond the cap are told apart up to this many (8 bytes each); past it the count
/// is a lower bound.
const UNSCORED_SERVERS_COUNTED: usize = 1 << 16;

/// Arguments of `seqwatch analyze`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 when every file was read whole, 2 when a file was \
damaged: damaged blocks were skipped (each named on stderr), or reading stopped at a truncated \
or corrupt block. The results still cover every packet read."
)]
pub struct AnalyzeArgs {
    /// Print `{"services": [...]}` instead of a table.
    #[arg(long)]
    pub json: bool,
    #[arg(long, help = settings::GUESSES.help(), default_value_t = settings::GUESSES.default,
          value_parser = |text: &str| settings::GUESSES.parse(text))]
    pub guesses: u64,
    #[arg(long, help = settings::WINDOW.help(), default_value_t = settings::WINDOW.default,
          value_parser = |text: &str| settings::WINDOW.parse(text))]
    pub window: usize,
    #[arg(long, default_value_t = settings::MAX_SERVICES.default,
          help = settings::MAX_SERVICES.help_for(
              "Servers scored; the SYN-ACKs of servers beyond them are counted, not scored"),
          value_parser = |text: &str| settings::MAX_SERVICES.parse(text))]
    pub max_services: usize,
    /// pcap or pcapng files, read in order as one stream per service.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// SYN-ACKs grouped by the server that sent them, for at most `max_services` servers.
pub struct Analysis {
    config: ScorerConfig,
    max_services: usize,
    services: BTreeMap<SocketAddr, ServiceScorer>,
    unscored: Unscored,
}

/// SYN-ACKs of servers seen once the cap was reached.
#[derive(Default)]
struct Unscored {
    synacks: u64,
    /// Hashes of the servers, up to `UNSCORED_SERVERS_COUNTED` of them.
    servers: HashSet<u64>,
    hasher: RandomState,
}

impl Analysis {
    pub fn new(config: ScorerConfig, max_services: usize) -> Self {
        Self {
            config,
            max_services,
            services: BTreeMap::new(),
            unscored: Unscored::default(),
        }
    }

    /// Feeds every SYN-ACK of one capture; on a bad block, what came before is kept.
    pub fn add_capture(&mut self, input: impl std::io::Read) -> Result<Capture, CaptureError> {
        read_frames_into(input, |obs| self.ingest(&obs))
    }

    fn ingest(&mut self, obs: &IsnObservation) {
        if let Some(scorer) = self.services.get_mut(&obs.server) {
            scorer.ingest(obs);
        } else if self.services.len() < self.max_services {
            let mut scorer = ServiceScorer::new(&self.config);
            scorer.ingest(obs);
            self.services.insert(obs.server, scorer);
        } else {
            let unscored = &mut self.unscored;
            unscored.synacks += 1;
            if unscored.servers.len() < UNSCORED_SERVERS_COUNTED {
                unscored
                    .servers
                    .insert(unscored.hasher.hash_one(obs.server));
            }
        }
    }

    pub fn reports(&mut self) -> Vec<ServiceReport> {
        self.services
            .iter_mut()
            .map(|(server, scorer)| scorer.report(&server.to_string()))
            .collect()
    }

    /// What the cap left out, on one line; `None` when every server was scored.
    pub fn unscored(&self) -> Option<String> {
        let unscored = &self.unscored;
        if unscored.synacks == 0 {
            return None;
        }
        let servers = unscored.servers.len();
        let at_least = if servers == UNSCORED_SERVERS_COUNTED {
            "at least "
        } else {
            ""
        };
        Some(format!(
            "{at_least}{servers} servers beyond the cap of {} (--max-services) were not scored \
             ({} SYN-ACKs)",
            self.max_services, unscored.synacks
        ))
    }
}

/// Calls `on_synack` for every SYN-ACK in a capture.
pub fn read_frames_into(
    input: impl std::io::Read,
    mut on_synack: impl FnMut(IsnObservation),
) -> Result<Capture, CaptureError> {
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
    let mut analysis = Analysis::new(
        ScorerConfig {
            guesses: args.guesses,
            window: args.window,
            ..ScorerConfig::default()
        },
        args.max_services,
    );
    let mut damaged = false;
    for path in &args.files {
        let (skipped, stopped) = match add_file(&mut analysis, path)? {
            Ok(capture) => (capture.skipped, None),
            Err(error) => (error.skipped.clone(), Some(error)),
        };
        report_skipped(path, &skipped);
        if let Some(error) = &stopped {
            eprintln!(
                "seqwatch analyze: {}: {error}; results include the packets before it",
                path.display()
            );
        }
        damaged |= !skipped.is_empty() || stopped.is_some();
    }
    if let Some(unscored) = analysis.unscored() {
        eprintln!("seqwatch analyze: {unscored}");
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

/// One line per skipped block, the first few of them, and one for the rest.
fn report_skipped(path: &Path, skipped: &Skipped) {
    let path = path.display();
    for block in &skipped.described {
        eprintln!("seqwatch analyze: {path}: {block}");
    }
    let undescribed = skipped.blocks - skipped.described.len() as u64;
    if undescribed > 0 {
        eprintln!(
            "seqwatch analyze: {path}: {undescribed} more damaged blocks skipped ({} in all)",
            skipped.blocks
        );
    }
    if skipped.packets > 0 {
        eprintln!(
            "seqwatch analyze: {path}: {} packets on interfaces whose description was skipped \
             were not read",
            skipped.packets
        );
    }
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
fn add_file(analysis: &mut Analysis, path: &Path) -> anyhow::Result<Result<Capture, CaptureError>> {
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
