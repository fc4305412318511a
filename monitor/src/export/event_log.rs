//! The JSON-lines event log (`--event-log`) every detector writes its findings to: one line
//! per anomaly, weak ISN generator, lost listener or plaintext on a TLS session.

use std::{
    collections::HashMap,
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::Context as _;
use prometheus::IntCounter;
use serde::Serialize;

use crate::{
    export::metrics::Registry,
    util::{lock, token_bucket::TokenBucket},
};

/// Lines per second the event log takes from all its writers together, and the burst: random
/// sources each get a fresh per-source burst, so this is what bounds a flood's lines.
const LOG_LINES_PER_SECOND: f64 = 100.0;
const LOG_LINES_BURST: f64 = 1000.0;
/// Why a line was left out of the event log: the `reason` label's values.
const SUPPRESSED_REASONS: [&str; 4] = ["per_source", "global_rate", "too_long", "write_error"];

/// `seqwatch_event_log_lines_total`, `seqwatch_event_log_lines_suppressed_total{reason}` and
/// `seqwatch_event_log_rotations_total`.
#[derive(Clone)]
pub struct EventLogMetrics {
    lines: IntCounter,
    suppressed: HashMap<&'static str, IntCounter>,
    rotations: IntCounter,
}

impl EventLogMetrics {
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let counter = |name: &str, help: &str| registry.counter(name, help);
        let suppressed = registry.counters(
            "seqwatch_event_log_lines_suppressed_total",
            "Event-log lines left out, by reason: per_source (a source's limit per \
                     kind), global_rate (the log's lines per second), too_long (longer than \
                     the file's size limit), write_error.",
            &["reason"],
        )?;
        Ok(EventLogMetrics {
            lines: counter(
                "seqwatch_event_log_lines_total",
                "Lines written to the event log.",
            )?,
            // Every reason is a series from the start.
            suppressed: SUPPRESSED_REASONS
                .into_iter()
                .map(|reason| (reason, suppressed.with_label_values(&[reason])))
                .collect(),
            rotations: counter(
                "seqwatch_event_log_rotations_total",
                "Times the event log file reached its size limit and was renamed to FILE.1 \
                 (replacing the previous one).",
            )?,
        })
    }

    fn suppressed(&self, reason: &'static str) {
        self.suppressed[reason].inc();
    }
}

/// The JSON-lines event log (`--event-log`), shared by the engines that write to it. Bounded
/// three ways: all writers together get [`LOG_LINES_PER_SECOND`] (a burst of
/// [`LOG_LINES_BURST`]); a file is renamed to `FILE.1` (replacing the previous one) before it
/// would pass `max_bytes`, so the two files never hold more than twice that; and a line that
/// cannot be written is dropped, never retried. Every line left out is counted by reason.
/// Each line is one write(2) of the whole line, so lines never interleave and nothing waits
/// in a buffer.
#[derive(Clone)]
pub struct EventLog(Arc<Mutex<LogWriter>>);

struct LogWriter {
    sink: Sink,
    budget: TokenBucket,
    metrics: EventLogMetrics,
    /// A write error is logged once, until a write succeeds again.
    failing: bool,
}

enum Sink {
    Stdout,
    File(LogFile),
}

/// The log file, renamed to `FILE.1` when the next line would take it past `max_bytes`.
struct LogFile {
    path: PathBuf,
    file: File,
    written: u64,
    max_bytes: u64,
}

impl LogFile {
    fn open(path: &Path, max_bytes: u64) -> std::io::Result<LogFile> {
        let file = File::options().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(LogFile {
            path: path.to_owned(),
            file,
            written,
            max_bytes,
        })
    }

    /// Appends a line; returns whether the file was rotated first.
    fn append(&mut self, line: &[u8]) -> std::io::Result<bool> {
        let rotate = self.written + line.len() as u64 > self.max_bytes;
        if rotate {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.written += line.len() as u64;
        Ok(rotate)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let mut rotated = self.path.clone().into_os_string();
        rotated.push(".1");
        match std::fs::rename(&self.path, &rotated) {
            // Moved away by someone else: start a new file where it was.
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        *self = LogFile::open(&self.path, self.max_bytes)?;
        Ok(())
    }
}

impl EventLog {
    /// Opens a file for appending (rotated at `max_bytes`), or stdout for `-`.
    pub fn open(path: &Path, max_bytes: u64, metrics: EventLogMetrics) -> anyhow::Result<Self> {
        let sink = if path == Path::new("-") {
            Sink::Stdout
        } else {
            Sink::File(
                LogFile::open(path, max_bytes)
                    .with_context(|| format!("opening the event log {}", path.display()))?,
            )
        };
        Ok(EventLog(Arc::new(Mutex::new(LogWriter {
            sink,
            budget: TokenBucket::full(LOG_LINES_BURST, LOG_LINES_PER_SECOND, Instant::now()),
            metrics,
            failing: false,
        }))))
    }

    /// Writes a line within the log's budget.
    pub fn write_line(&self, value: &impl Serialize) {
        self.write_limited(Instant::now(), || true, || value);
    }

    /// Writes the line `line` makes, if the log's budget and then `allowed` (a per-source
    /// limit) let it through; otherwise only counts it, building nothing.
    pub fn write_limited<T: Serialize>(
        &self,
        now: Instant,
        allowed: impl FnOnce() -> bool,
        line: impl FnOnce() -> T,
    ) {
        let mut writer = lock(&self.0);
        if writer.budget.available(now) < 1.0 {
            writer.metrics.suppressed("global_rate");
            return;
        }
        if !allowed() {
            writer.metrics.suppressed("per_source");
            return;
        }
        writer.budget.take(now);
        let mut bytes = match serde_json::to_vec(&line()) {
            Ok(bytes) => bytes,
            Err(err) => return writer.failed(&err.into()),
        };
        bytes.push(b'\n');
        writer.write(&bytes);
    }
}

impl LogWriter {
    fn write(&mut self, line: &[u8]) {
        let written = match &mut self.sink {
            Sink::Stdout => std::io::stdout().lock().write_all(line).map(|()| false),
            Sink::File(file) if line.len() as u64 > file.max_bytes => {
                self.metrics.suppressed("too_long");
                return;
            }
            Sink::File(file) => file.append(line),
        };
        match written {
            Ok(rotated) => {
                self.failing = false;
                self.metrics.lines.inc();
                if rotated {
                    self.metrics.rotations.inc();
                }
            }
            Err(err) => self.failed(&err.into()),
        }
    }

    fn failed(&mut self, err: &anyhow::Error) {
        self.metrics.suppressed("write_error");
        if !self.failing {
            log::error!("writing the event log: {err:#}");
            self.failing = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn event_log(path: &Path, max_bytes: u64) -> (EventLog, Registry) {
        let registry = Registry::default();
        let metrics = EventLogMetrics::new(&registry).unwrap();
        (EventLog::open(path, max_bytes, metrics).unwrap(), registry)
    }

    /// `name{reason="…"}` → value for every counter of the registry.
    fn counts(registry: &Registry) -> HashMap<String, u64> {
        let mut counts = HashMap::new();
        for family in registry.gather() {
            for metric in family.get_metric() {
                let labels: Vec<String> = metric
                    .get_label()
                    .iter()
                    .map(|l| l.value().to_owned())
                    .collect();
                let name = match labels.as_slice() {
                    [] => family.name().to_owned(),
                    labels => format!("{}{{{}}}", family.name(), labels.join(",")),
                };
                counts.insert(name, metric.get_counter().value() as u64);
            }
        }
        counts
    }

    #[test]
    fn the_event_log_takes_a_burst_then_its_rate_from_all_writers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let (log, registry) = event_log(&path, 64 << 20);
        let start = Instant::now();
        for n in 0..3 * LOG_LINES_BURST as u64 {
            // A third of the lines are over their source's own limit.
            log.write_limited(start, || n % 3 != 0, || n);
        }
        let after_burst = counts(&registry);
        let written = LOG_LINES_BURST as u64;
        assert_eq!(after_burst["seqwatch_event_log_lines_total"], written);
        let lines = std::fs::read_to_string(&path).unwrap().lines().count() as u64;
        assert_eq!(lines, written);
        let suppressed = |reason: &str| {
            after_burst[&format!("seqwatch_event_log_lines_suppressed_total{{{reason}}}")]
        };
        // Up to the 1500th line, every third was over its source's limit.
        assert_eq!(suppressed("per_source"), written / 2);
        assert_eq!(
            suppressed("global_rate"),
            3 * written - written - written / 2
        );
        let second_later = start + Duration::from_secs(1);
        for _ in 0..1000 {
            log.write_limited(second_later, || true, || "x");
        }
        assert_eq!(
            counts(&registry)["seqwatch_event_log_lines_total"],
            written + LOG_LINES_PER_SECOND as u64
        );
    }

    #[test]
    fn the_event_log_rotates_once_and_never_holds_more_than_twice_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "x".repeat(900) + "\n").unwrap();
        let (log, registry) = event_log(&path, 1000);
        let line = "y".repeat(98);
        let start = Instant::now();
        for n in 0..30u32 {
            log.write_limited(start + Duration::from_secs(n.into()), || true, || &line);
        }
        log.write_line(&"z".repeat(2000));
        let size = |path: &Path| std::fs::metadata(path).unwrap().len();
        let rotated = dir.path().join("events.jsonl.1");
        assert!(size(&path) <= 1000 && size(&rotated) <= 1000);
        // The old file's 901 bytes, then 30 lines of 101: rotated before the 1st, 10th and 19th
        // and 28th line.
        assert_eq!((size(&path), size(&rotated)), (3 * 101, 9 * 101));
        let counts = counts(&registry);
        assert_eq!(counts["seqwatch_event_log_rotations_total"], 4);
        assert_eq!(counts["seqwatch_event_log_lines_total"], 30);
        assert_eq!(
            counts["seqwatch_event_log_lines_suppressed_total{too_long}"],
            1
        );
    }
}
