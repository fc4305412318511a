//! The settings of `seqwatch run`, each declared once, below: its key in the configuration
//! file, its flag, what it sets, its default and what it allows. From these declarations come
//! the [`Settings`] the daemon runs with (defaults, then the file, then the flags given), the
//! flags of `run` ([`RunArgs`]), the checks of the file (`seqwatch check-config`) and the
//! table of docs/config.md ([`markdown_table`]), which a test keeps equal to the docs.

mod file;
mod value;

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
};

use clap::{Arg, ArgMatches, Args, Command, FromArgMatches};

pub use file::{ConfigError, ConfigFile};
pub use value::{Directions, Flag, NameList, NetnsMode, PortList, Setting, Value, flag};

use crate::kernel::AttachMode;

/// The port /metrics listens on by default.
pub const DEFAULT_PORT: u16 = 10045;
/// Implicit-TLS ports: HTTPS, SMTPS (submissions), LDAPS, DNS over TLS, IMAPS, POP3S, and
/// HTTPS's usual alternative.
pub const DEFAULT_TLS_PORTS: [u16; 7] = [443, 465, 636, 853, 993, 995, 8443];
/// Linux interface names are at most IFNAMSIZ - 1 bytes.
const IFNAME_MAX: usize = 15;

pub static INTERFACES: Setting<Vec<String>> = Setting {
    key: "interfaces",
    flag: Flag {
        long: "interface",
        short: Some('i'),
        value_name: "NAME",
    },
    help: "Interfaces to monitor (the flag is repeated); none: every up, non-loopback \
           interface, including ones that appear later",
    default: Vec::new(),
    allowed: interface_name,
};

fn interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > IFNAME_MAX || name.contains(['/', ' ', ':']) {
        return Err(format!(
            "{name:?} is not an interface name: expected 1 to {IFNAME_MAX} characters, no '/', \
             ':' or space"
        ));
    }
    Ok(())
}

pub static DIRECTION: Setting<Directions> = Setting {
    key: "direction",
    flag: flag("direction", "DIRECTION"),
    help: "Which SYN-ACKs to sample: this host's own (egress), remote servers' (ingress: only \
           answers to SYNs that left by the interface, docs/scorer.md), or both; stateful \
           handshake checks need both",
    default: Directions::Egress,
    allowed: (),
};

pub static LISTEN: Setting<SocketAddr> = Setting {
    key: "listen",
    flag: flag("listen", "IP:PORT"),
    help: "Address of /metrics, the landing page and the JSON API (/api/v1/…)",
    default: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, DEFAULT_PORT)),
    allowed: (),
};

pub static ATTACH_MODE: Setting<AttachMode> = Setting {
    key: "attach_mode",
    flag: flag("attach-mode", "MODE"),
    help: "How to attach the classifiers: tcx on Linux 6.6+ and netlink/clsact before (auto), \
           or either",
    default: AttachMode::Auto,
    allowed: (),
};

/// Nothing is reserved per service up front: each costs what its samples take, so the memory
/// bound is this × `WINDOW` × the bytes of one sample.
pub static MAX_SERVICES: Setting<usize> = Setting {
    key: "max_services",
    flag: flag("max-services", "N"),
    help: "Services scored at once (beyond it the least recently seen without a label is \
           evicted, and counted), and `service` labels per metric (docs/limits.md)",
    default: 4096,
    allowed: 1..=1_048_576,
};

/// Up to the largest TOML integer, so that any flag value can be written in the file too.
pub static GUESSES: Setting<u64> = Setting {
    key: "guesses",
    flag: flag("guesses", "N"),
    help: "Guesses a blind attacker may spend on one ISN, for the attack feasibility",
    default: 5000,
    allowed: 1..=i64::MAX as u64,
};

/// The scorer needs a handful of samples per window; beyond 65 536 a window only costs memory.
pub static WINDOW: Setting<usize> = Setting {
    key: "scorer.window",
    flag: flag("window", "N"),
    help: "ISN samples kept and scored per service",
    default: 2048,
    allowed: 8..=65_536,
};

pub static SAMPLE_LOG: Setting<Option<PathBuf>> = Setting {
    key: "sample_log",
    flag: flag("sample-log", "FILE"),
    help: "Also write every SYN-ACK sample to this file as one JSON line",
    default: None,
    allowed: (),
};

pub static EVENT_LOG: Setting<Option<PathBuf>> = Setting {
    key: "event_log",
    flag: flag("event-log", "FILE|-"),
    help: "Write every anomaly, weak ISN generator, lost listener and TLS finding as one JSON \
           line to this file (`-`: stdout), at most a burst of 10 then 1/s per source and kind \
           (docs/anomalies.md)",
    default: None,
    allowed: (),
};

/// From longer than any line to as much as a disk holds.
pub static EVENT_LOG_MAX_BYTES: Setting<u64> = Setting {
    key: "event_log_max_bytes",
    flag: flag("event-log-max-bytes", "BYTES"),
    help: "Rename the event log file to FILE.1 (replacing it) before it passes this size, so \
           that the two never hold more than twice it; all writers together get 100 lines/s \
           (a burst of 1000); not for stdout",
    default: 64 << 20,
    allowed: 1 << 20..=1 << 40,
};

pub static LISTENER_LOSS_WINDOW: Setting<u64> = Setting {
    key: "listener_loss_window",
    flag: flag("listener-loss-window", "SECONDS"),
    help: "Report a listener that closes (or whose process exits) within this many seconds \
           after a handshake anomaly to its port as listener_lost_after_anomaly",
    default: 10,
    allowed: 1..=3600,
};

/// Each source ranked costs 16 counters per kind and time bucket.
pub static TOP_SOURCES: Setting<usize> = Setting {
    key: "top_sources",
    flag: flag("top-sources", "K"),
    help: "Sources ranked per anomaly kind: `seqwatch_anomaly_top_source_events` and \
           /api/v1/anomalies/top-sources",
    default: 10,
    allowed: 1..=50,
};

/// The window is kept in 10 buckets.
pub static ANOMALY_WINDOW: Setting<u64> = Setting {
    key: "anomaly_window",
    flag: flag("anomaly-window", "SECONDS"),
    help: "Sliding window of the top anomaly sources and of the spoofing scores, in seconds",
    default: 300,
    allowed: 10..=86_400,
};

pub static UNRESPONSIVE_AFTER: Setting<u64> = Setting {
    key: "unresponsive_after",
    flag: flag("unresponsive-after", "SECONDS"),
    help: "Report a listening port as listener_unresponsive once a connection has waited this \
           many seconds in its accept queue (docs/listeners.md)",
    default: 10,
    allowed: 1..=3600,
};

pub static TLS_PORTS: std::sync::LazyLock<Setting<PortList>> =
    std::sync::LazyLock::new(|| Setting {
        key: "tls.ports",
        flag: flag("tls-ports", "PORT,…"),
        help: "TCP ports carrying TLS: every record header this host sends on them is checked \
               (on the command line comma-separated)",
        default: PortList(DEFAULT_TLS_PORTS.to_vec()),
        allowed: (),
    });

pub static TLS_DETECT_HELLO: Setting<bool> = Setting {
    key: "tls.detect_hello",
    flag: flag("tls-detect-hello", "BOOL"),
    help: "Also check flows on other ports whose first payload from this host is a TLS \
           ClientHello or ServerHello",
    default: true,
    allowed: (),
};

pub static TLS_LOG_PREFIX: Setting<bool> = Setting {
    key: "tls.log_prefix",
    flag: flag("tls-log-prefix", "BOOL"),
    help: "Put the first 16 bytes found where a TLS record header had to start into the event \
           log, in hex (off: payload bytes never leave the kernel)",
    default: false,
    allowed: (),
};

pub static NETNS: Setting<NetnsMode> = Setting {
    key: "netns",
    flag: flag("netns", "MODE"),
    help: "Network namespaces watched: this one, or every one of the host as they come and go \
           (their listeners, TCP events and TcpExt read inside each, their veths' SYN-ACKs \
           sampled as they come in; needs CAP_SYS_ADMIN and CAP_SYS_PTRACE kept, \
           docs/deploy.md)",
    default: NetnsMode::Own,
    allowed: (),
};

pub static NETNS_ONLY: Setting<NameList> = Setting {
    key: "netns_only",
    flag: flag("netns-only", "NAME,…"),
    help: "With --netns all, follow only the namespaces named so: by their /run/netns name, \
           their container's name or short ID, or their pod's name (empty: every one)",
    default: NameList(Vec::new()),
    allowed: (),
};

pub static WEB_CONFIG: Setting<Option<PathBuf>> = Setting {
    key: "web_config",
    flag: flag("web-config", "FILE"),
    help: "TLS and basic auth for the HTTP endpoints: an exporter-toolkit web-config YAML \
           file (below); without it plain HTTP",
    default: None,
    allowed: (),
};

/// What each declared setting is visited with: its declaration and where it lands.
trait Visit {
    fn visit<T: Value>(&mut self, setting: &'static Setting<T>, field: fn(&mut Settings) -> &mut T);
}

/// Declares [`Settings`], its defaults, and the one list every use of the settings walks.
macro_rules! settings {
    ($($field:ident: $type:ty = $setting:expr,)*) => {
        /// What `seqwatch run` runs with.
        #[derive(Clone, Debug, PartialEq)]
        pub struct Settings {
            $(#[doc = concat!("[`", stringify!($setting), "`]")] pub $field: $type,)*
        }

        impl Default for Settings {
            fn default() -> Self {
                Settings { $($field: $setting.default.clone(),)* }
            }
        }

        impl Settings {
            fn visit(visitor: &mut impl Visit) {
                $(visitor.visit::<$type>(&$setting, |settings| &mut settings.$field);)*
            }
        }
    };
}

settings! {
    interfaces: Vec<String> = INTERFACES,
    direction: Directions = DIRECTION,
    listen: SocketAddr = LISTEN,
    attach_mode: AttachMode = ATTACH_MODE,
    max_services: usize = MAX_SERVICES,
    guesses: u64 = GUESSES,
    window: usize = WINDOW,
    sample_log: Option<PathBuf> = SAMPLE_LOG,
    event_log: Option<PathBuf> = EVENT_LOG,
    event_log_max_bytes: u64 = EVENT_LOG_MAX_BYTES,
    listener_loss_window: u64 = LISTENER_LOSS_WINDOW,
    top_sources: usize = TOP_SOURCES,
    anomaly_window: u64 = ANOMALY_WINDOW,
    unresponsive_after: u64 = UNRESPONSIVE_AFTER,
    netns: NetnsMode = NETNS,
    netns_only: NameList = NETNS_ONLY,
    tls_ports: PortList = TLS_PORTS,
    tls_detect_hello: bool = TLS_DETECT_HELLO,
    tls_log_prefix: bool = TLS_LOG_PREFIX,
    web_config: Option<PathBuf> = WEB_CONFIG,
}

impl Settings {
    /// Every setting's key in the file.
    fn keys() -> Vec<&'static str> {
        struct Keys(Vec<&'static str>);
        impl Visit for Keys {
            fn visit<T: Value>(
                &mut self,
                setting: &'static Setting<T>,
                _: fn(&mut Settings) -> &mut T,
            ) {
                self.0.push(setting.key);
            }
        }
        let mut keys = Keys(Vec::new());
        Settings::visit(&mut keys);
        keys.0
    }
}

/// The flags of `seqwatch run`, as given: each setting's flag, and `--config`.
#[derive(Clone, Debug)]
pub struct RunArgs {
    matches: ArgMatches,
    config: Option<PathBuf>,
}

const CONFIG: &str = "config";

impl Args for RunArgs {
    fn augment_args(command: Command) -> Command {
        struct Flags(Command);
        impl Visit for Flags {
            fn visit<T: Value>(
                &mut self,
                setting: &'static Setting<T>,
                _: fn(&mut Settings) -> &mut T,
            ) {
                let default = setting
                    .default
                    .to_toml()
                    .map_or_else(String::new, |value| format!(" [default: {value}]"));
                let mut arg = Arg::new(setting.key)
                    .long(setting.flag.long)
                    .value_name(setting.flag.value_name)
                    .help(format!("{}{default}", setting.help()));
                if let Some(short) = setting.flag.short {
                    arg = arg.short(short);
                }
                let command = std::mem::replace(&mut self.0, Command::new(""));
                self.0 = command.arg(T::arg(setting, arg));
            }
        }
        let mut flags = Flags(command);
        Settings::visit(&mut flags);
        flags.0.arg(
            Arg::new(CONFIG)
                .long("config")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("Configuration file (TOML, see docs/config.md); flags given as well override it"),
        )
    }

    fn augment_args_for_update(command: Command) -> Command {
        Self::augment_args(command)
    }
}

impl FromArgMatches for RunArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(RunArgs {
            config: matches.get_one::<PathBuf>(CONFIG).cloned(),
            matches: matches.clone(),
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = RunArgs::from_arg_matches(matches)?;
        Ok(())
    }
}

/// The settings `run` runs with: the defaults, under the file's values (`--config`), under
/// the flags given.
pub fn resolve(args: &RunArgs) -> Result<Settings, ConfigError> {
    let mut settings = Settings::default();
    if let Some(path) = &args.config {
        ConfigFile::load(path, &mut settings)?;
    }
    struct FlagValues<'a>(&'a ArgMatches, &'a mut Settings);
    impl Visit for FlagValues<'_> {
        fn visit<T: Value>(
            &mut self,
            setting: &'static Setting<T>,
            field: fn(&mut Settings) -> &mut T,
        ) {
            if let Some(value) = T::from_matches(self.0, setting.key) {
                *field(self.1) = value;
            }
        }
    }
    Settings::visit(&mut FlagValues(&args.matches, &mut settings));
    settings.check_together()?;
    Ok(settings)
}

/// Checks a configuration file (`seqwatch check-config`).
pub fn check_file(path: &std::path::Path) -> Result<(), ConfigError> {
    let mut settings = Settings::default();
    ConfigFile::load(path, &mut settings)?;
    settings.check_together()
}

impl Settings {
    /// What no single setting's check sees: settings that mean nothing without another.
    fn check_together(&self) -> Result<(), ConfigError> {
        if !self.netns_only.0.is_empty() && self.netns != NetnsMode::All {
            return Err(ConfigError(format!(
                "netns_only ({}) follows only some of the other network namespaces: it needs \
                 netns = \"all\" (--netns all)",
                self.netns_only.0.join(", ")
            )));
        }
        Ok(())
    }
}

/// The table of docs/config.md: every setting's key, flag, values, default and meaning.
pub fn markdown_table() -> String {
    struct Rows(String);
    impl Visit for Rows {
        fn visit<T: Value>(
            &mut self,
            setting: &'static Setting<T>,
            _: fn(&mut Settings) -> &mut T,
        ) {
            let flag = match setting.flag.short {
                Some(short) => format!("`--{}`, `-{short}`", setting.flag.long),
                None => format!("`--{}`", setting.flag.long),
            };
            let allowed = T::describe(&setting.allowed).unwrap_or_else(|| "—".to_owned());
            let default = setting
                .default
                .to_toml()
                .map_or_else(|| "—".to_owned(), |value| format!("`{value}`"));
            let _ = writeln!(
                self.0,
                "| `{}` | {flag} `{}` | {allowed} | {default} | {} |",
                setting.key, setting.flag.value_name, setting.help
            );
        }
    }
    let mut rows =
        Rows("| key | flag | values | default | meaning |\n|---|---|---|---|---|\n".to_owned());
    Settings::visit(&mut rows);
    rows.0
}

#[cfg(test)]
mod tests;
