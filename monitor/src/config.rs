//! The configuration file of `seqwatch run` (TOML), its validation (`seqwatch check-config`)
//! and its merge with the command line, where flags win. Every error names the file, the line,
//! the key and what is allowed. The keys are documented in docs/config.md.

use std::{
    fmt,
    net::SocketAddr,
    num::NonZeroUsize,
    ops::{Range, RangeInclusive},
    path::{Path, PathBuf},
};

use clap::{ArgMatches, ValueEnum, parser::ValueSource};
use serde::{Deserialize, Deserializer};
use toml::de::{DeTable, DeValue};

use crate::{
    daemon::Directions, daemon::RunArgs, probes::AttachMode, tls::PortList,
    util::files::read_bounded, web::WebConfig,
};

/// A numeric setting: its key in the file, the range allowed and the default. The flags of
/// `run` and `analyze` parse with `parse` and the file is checked with `check`, so a flag and
/// its key accept exactly the same values, and the help shows the range they share.
pub struct Setting<T: 'static> {
    /// The dotted key in the configuration file.
    pub key: &'static str,
    pub range: RangeInclusive<T>,
    pub default: T,
    /// What it sets, for `--help` (the range is added).
    pub help: &'static str,
}

/// Services scored at once. Nothing is reserved per service up front: each costs what its
/// samples take, so the memory bound is this × `WINDOW` × the bytes of one sample.
pub const MAX_SERVICES: Setting<usize> = Setting {
    key: "max_services",
    range: 1..=1_048_576,
    default: 4096,
    help: "Services scored at once (beyond it the least recently seen without a label is evicted, and counted), and `service` labels per metric (docs/limits.md)",
};
pub const MAX_SOURCES: Setting<usize> = Setting {
    key: "max_sources",
    range: 1..=1_048_576,
    default: 65_536,
    help: "Sources tracked by the anomaly engine (reserved)",
};
/// Up to the largest TOML integer, so that any flag value can be written in the file too.
pub const GUESSES: Setting<u64> = Setting {
    key: "guesses",
    range: 1..=i64::MAX as u64,
    default: 5000,
    help: "Guesses a blind attacker may spend on one ISN, for the attack feasibility",
};
/// The scorer needs a handful of samples per window; beyond 65 536 a window only costs memory.
pub const WINDOW: Setting<usize> = Setting {
    key: "scorer.window",
    range: 8..=65_536,
    default: 2048,
    help: "ISN samples kept and scored per service",
};
/// Seconds between an anomaly and a listener's loss that still correlate them.
pub const LISTENER_LOSS_WINDOW: Setting<u64> = Setting {
    key: "listener_loss_window",
    range: 1..=3600,
    default: crate::crash::DEFAULT_WINDOW.as_secs(),
    help: "Report a listener that closes (or whose process exits) within this many seconds \
           after a handshake anomaly to its port",
};
/// Sources ranked per anomaly kind; each costs 16 counters per kind and time bucket.
pub const TOP_SOURCES: Setting<usize> = Setting {
    key: "top_sources",
    range: 1..=50,
    default: crate::top_sources::DEFAULT_K,
    help: "Sources ranked per anomaly kind: `seqwatch_anomaly_top_source_events` and \
           /api/v1/anomalies/top-sources",
};
/// Seconds of the sliding window of the top sources and spoofing scores (10 buckets).
pub const ANOMALY_WINDOW: Setting<u64> = Setting {
    key: "anomaly_window",
    range: 10..=86_400,
    default: crate::top_sources::DEFAULT_WINDOW.as_secs(),
    help: "Sliding window of the top sources and the spoofing scores, in seconds",
};
pub const UNRESPONSIVE_AFTER: Setting<u64> = Setting {
    key: "unresponsive_after",
    range: 1..=3600,
    default: crate::listeners::DEFAULT_UNRESPONSIVE_AFTER.as_secs(),
    help: "Report a listening port as unresponsive once a connection has waited this many \
           seconds in its accept queue",
};
/// Bytes of the event log file before it is rotated: 1 MiB (longer than any line) to 1 TiB.
pub const EVENT_LOG_MAX_BYTES: Setting<u64> = Setting {
    key: "event_log_max_bytes",
    range: 1 << 20..=1 << 40,
    default: crate::handshake::DEFAULT_EVENT_LOG_MAX_BYTES,
    help: "Rename the event log file to FILE.1 (replacing it) before it passes this size; all \
           writers together get 100 lines/s (a burst of 1000)",
};

impl<T> Setting<T>
where
    T: Copy + PartialOrd + fmt::Display + std::str::FromStr,
    T::Err: fmt::Display,
{
    /// The value if it is in range, or what is allowed.
    pub fn check(&self, value: T) -> Result<T, String> {
        if self.range.contains(&value) {
            Ok(value)
        } else {
            Err(format!("{value} is out of range: {}", self.allowed()))
        }
    }

    /// A flag's value: a number in range (clap's `value_parser`).
    pub fn parse(&self, text: &str) -> Result<T, String> {
        let value = text
            .parse()
            .map_err(|err| format!("not a number ({err}): {}", self.allowed()))?;
        self.check(value)
    }

    /// `--help` for the flag: what it sets, then its range.
    pub fn help(&self) -> String {
        self.help_for(self.help)
    }

    /// `--help` for a flag that shares the setting's range but means something of its own.
    pub fn help_for(&self, what: &str) -> String {
        format!("{what} ({} to {})", self.range.start(), self.range.end())
    }

    fn allowed(&self) -> String {
        format!("expected {} to {}", self.range.start(), self.range.end())
    }
}

/// Linux interface names are at most IFNAMSIZ - 1 bytes.
const IFNAME_MAX: usize = 15;

/// A configuration that cannot be used: exit code 2, like a usage error.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The file as written: every key optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub interfaces: Option<Vec<String>>,
    #[serde(default, deserialize_with = "value_enum")]
    pub direction: Option<Directions>,
    pub listen: Option<SocketAddr>,
    #[serde(default, deserialize_with = "value_enum")]
    pub attach_mode: Option<AttachMode>,
    pub max_services: Option<usize>,
    /// Sources tracked by the anomaly engine (accepted and validated; used once it lands).
    pub max_sources: Option<usize>,
    pub guesses: Option<u64>,
    pub sample_log: Option<PathBuf>,
    /// The handshake anomaly engine's event log (`-`: stdout).
    pub event_log: Option<PathBuf>,
    /// Bytes of the event log file before it is renamed to FILE.1.
    pub event_log_max_bytes: Option<u64>,
    /// Seconds after an anomaly within which a listener's loss is reported.
    pub listener_loss_window: Option<u64>,
    /// Sources ranked per anomaly kind.
    pub top_sources: Option<usize>,
    /// Seconds of the top sources' and spoofing scores' sliding window.
    pub anomaly_window: Option<u64>,
    /// Seconds a connection may wait in an accept queue before its port is unresponsive.
    pub unresponsive_after: Option<u64>,
    pub web_config: Option<PathBuf>,
    #[serde(default)]
    pub scorer: ScorerSection,
    #[serde(default)]
    pub tls: TlsSection,
}

/// `[tls]`: the TLS record-framing check.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub ports: Option<Vec<u16>>,
    pub detect_hello: Option<bool>,
    pub log_prefix: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScorerSection {
    pub window: Option<usize>,
}

/// A clap value enum read from a string, with the same names and the list of allowed ones.
fn value_enum<'de, D: Deserializer<'de>, T: ValueEnum>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    let name = String::deserialize(deserializer)?;
    T::from_str(&name, false).map(Some).map_err(|_| {
        let allowed: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_owned()))
            .collect();
        serde::de::Error::custom(format!(
            "`{name}` is not allowed: expected one of {}",
            allowed.join(", ")
        ))
    })
}

/// A parsed file and where it came from, for messages and relative paths.
pub struct LoadedConfig {
    pub file: FileConfig,
    path: PathBuf,
    source: String,
}

impl LoadedConfig {
    /// Reads, parses and validates a configuration file, and the web config it names.
    pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
        let source = read_bounded(path)
            .and_then(|bytes| String::from_utf8(bytes).map_err(std::io::Error::other))
            .map_err(|err| ConfigError(format!("{}: cannot read: {err}", path.display())))?;
        let mut config = LoadedConfig {
            file: FileConfig::default(),
            path: path.to_owned(),
            source,
        };
        config.file = toml::from_str(&config.source).map_err(|err| {
            config.error_at(err.span(), err.message().trim_end().to_owned(), None)
        })?;
        config.resolve_relative_paths();
        config.validate()?;
        Ok(config)
    }

    /// Paths in the file are relative to the file's own directory.
    fn resolve_relative_paths(&mut self) {
        let base = self.path.parent().unwrap_or(Path::new(".")).to_owned();
        let file = &mut self.file;
        for path in [
            &mut file.sample_log,
            &mut file.event_log,
            &mut file.web_config,
        ]
        .into_iter()
        .flatten()
        {
            if path.is_relative() && path != Path::new("-") {
                *path = base.join(&*path);
            }
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let file = &self.file;
        for name in file.interfaces.iter().flatten() {
            if name.is_empty() || name.len() > IFNAME_MAX || name.contains(['/', ' ', ':']) {
                return Err(self.key_error(
                    &["interfaces"],
                    format!(
                        "{name:?} is not an interface name: expected 1 to {IFNAME_MAX} \
                         characters, no '/', ':' or space"
                    ),
                ));
            }
        }
        self.check(&MAX_SERVICES, file.max_services)?;
        self.check(&MAX_SOURCES, file.max_sources)?;
        self.check(&GUESSES, file.guesses)?;
        self.check(&WINDOW, file.scorer.window)?;
        self.check(&LISTENER_LOSS_WINDOW, file.listener_loss_window)?;
        self.check(&TOP_SOURCES, file.top_sources)?;
        self.check(&ANOMALY_WINDOW, file.anomaly_window)?;
        self.check(&UNRESPONSIVE_AFTER, file.unresponsive_after)?;
        self.check(&EVENT_LOG_MAX_BYTES, file.event_log_max_bytes)?;
        if file.tls.ports.iter().flatten().any(|port| *port == 0) {
            return Err(self.key_error(
                &["tls", "ports"],
                "0 is not a port: expected 1 to 65535".to_owned(),
            ));
        }
        for (key, path) in [
            ("sample_log", &file.sample_log),
            ("event_log", &file.event_log),
        ] {
            if let Some(path) = path
                && path.file_name().is_none()
            {
                return Err(self.key_error(&[key], "expected a file path".to_owned()));
            }
        }
        if let Some(path) = &file.web_config {
            WebConfig::load(path)
                .map_err(|err| self.key_error(&["web_config"], err.to_string()))?;
        }
        Ok(())
    }

    fn check<T>(&self, setting: &Setting<T>, value: Option<T>) -> Result<(), ConfigError>
    where
        T: Copy + PartialOrd + fmt::Display + std::str::FromStr,
        T::Err: fmt::Display,
    {
        match value.map(|value| setting.check(value)) {
            Some(Err(message)) => {
                let key: Vec<&str> = setting.key.split('.').collect();
                Err(self.key_error(&key, message))
            }
            _ => Ok(()),
        }
    }

    /// An error about a key that parsed but is not acceptable.
    fn key_error(&self, key: &[&str], message: String) -> ConfigError {
        let span = DeTable::parse(&self.source)
            .ok()
            .and_then(|table| key_span(table.get_ref(), key));
        self.error_at(span, message, Some(key.join(".")))
    }

    /// `FILE:LINE: key `KEY`: MESSAGE`, the key found from the span when not given.
    fn error_at(
        &self,
        span: Option<Range<usize>>,
        message: String,
        key: Option<String>,
    ) -> ConfigError {
        let file = self.path.display();
        let Some(span) = span else {
            return ConfigError(format!("{file}: {message}"));
        };
        let line = self.source[..span.start.min(self.source.len())]
            .matches('\n')
            .count()
            + 1;
        let key = key.or_else(|| {
            let table = DeTable::parse(&self.source).ok()?;
            key_at(table.get_ref(), span.start)
        });
        match key {
            Some(key) => ConfigError(format!("{file}:{line}: key `{key}`: {message}")),
            None => ConfigError(format!("{file}:{line}: {message}")),
        }
    }
}

/// The dotted key whose name or value covers byte `pos`, innermost first.
fn key_at(table: &DeTable<'_>, pos: usize) -> Option<String> {
    table.iter().find_map(|(key, value)| {
        if let DeValue::Table(inner) = value.get_ref()
            && let Some(inner_key) = key_at(inner, pos)
        {
            return Some(format!("{}.{inner_key}", key.get_ref()));
        }
        (key.span().contains(&pos) || value.span().contains(&pos))
            .then(|| key.get_ref().to_string())
    })
}

/// Where a dotted key's name is written.
fn key_span(table: &DeTable<'_>, path: &[&str]) -> Option<Range<usize>> {
    let (first, rest) = path.split_first()?;
    let (key, value) = table.iter().find(|(key, _)| key.get_ref() == first)?;
    match (rest.is_empty(), value.get_ref()) {
        (true, _) => Some(key.span()),
        (false, DeValue::Table(inner)) => key_span(inner, rest),
        (false, _) => None,
    }
}

/// `seqwatch run`'s arguments with the file's values under the flags that were not given.
pub fn merge(mut args: RunArgs, matches: &ArgMatches) -> Result<RunArgs, ConfigError> {
    let Some(path) = args.config.clone() else {
        return Ok(args);
    };
    let file = LoadedConfig::load(&path)?.file;
    let from_file = |id: &str| matches.value_source(id) != Some(ValueSource::CommandLine);
    if let Some(interfaces) = file.interfaces
        && from_file("interfaces")
    {
        args.interfaces = interfaces;
    }
    set(&mut args.direction, file.direction, from_file("direction"));
    set(&mut args.listen, file.listen, from_file("listen"));
    set(
        &mut args.attach_mode,
        file.attach_mode,
        from_file("attach_mode"),
    );
    let max_services = file.max_services.and_then(NonZeroUsize::new);
    set(
        &mut args.max_services,
        max_services,
        from_file("max_services"),
    );
    set(&mut args.guesses, file.guesses, from_file("guesses"));
    set(&mut args.window, file.scorer.window, from_file("window"));
    set(
        &mut args.listener_loss_window,
        file.listener_loss_window,
        from_file("listener_loss_window"),
    );
    set(
        &mut args.top_sources,
        file.top_sources,
        from_file("top_sources"),
    );
    set(
        &mut args.anomaly_window,
        file.anomaly_window,
        from_file("anomaly_window"),
    );
    set(
        &mut args.unresponsive_after,
        file.unresponsive_after,
        from_file("unresponsive_after"),
    );
    set(
        &mut args.event_log_max_bytes,
        file.event_log_max_bytes,
        from_file("event_log_max_bytes"),
    );
    set(
        &mut args.tls_ports,
        file.tls.ports.map(PortList),
        from_file("tls_ports"),
    );
    set(
        &mut args.tls_detect_hello,
        file.tls.detect_hello,
        from_file("tls_detect_hello"),
    );
    set(
        &mut args.tls_log_prefix,
        file.tls.log_prefix,
        from_file("tls_log_prefix"),
    );
    if from_file("sample_log") && file.sample_log.is_some() {
        args.sample_log = file.sample_log;
    }
    if from_file("event_log") && file.event_log.is_some() {
        args.event_log = file.event_log;
    }
    if from_file("web_config") && file.web_config.is_some() {
        args.web_config = file.web_config;
    }
    Ok(args)
}

fn set<T>(target: &mut T, value: Option<T>, from_file: bool) {
    if let Some(value) = value
        && from_file
    {
        *target = value;
    }
}
