//! Reads `/proc/net/netstat` (TcpExt) of this network namespace: the TcpExt counters that
//! node_exporter leaves out by default, re-exported as `seqwatch_tcpext_*_total`, and the
//! SYN-cookie watch the scorer uses. Both read the same file through [`read_tcpext`]. The same
//! counters of the other namespaces followed (`--netns all`) are exported as
//! `seqwatch_netns_tcpext_*_total{netns}`, from a [`NetstatFile`] opened inside each.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io::{self, Read as _, Seek as _, SeekFrom},
    sync::{Arc, Mutex},
};

use prometheus::{
    core::{Collector, Desc},
    proto::{Counter, LabelPair, Metric, MetricFamily, MetricType},
};

use crate::util::lock;

/// This network namespace's counters: /proc/net is /proc/self/net, the daemon's namespace.
const NETSTAT: &str = "/proc/net/netstat";

/// One exported TcpExt counter: the kernel's field name and the metric it becomes.
pub struct TcpExtCounter {
    /// The name in the `TcpExt:` lines (and in `nstat`, prefixed `TcpExt`).
    pub field: &'static str,
    /// `seqwatch_tcpext_` + the field in snake_case + `_total`.
    pub metric: &'static str,
    pub help: &'static str,
}

const fn counter(field: &'static str, metric: &'static str, help: &'static str) -> TcpExtCounter {
    TcpExtCounter {
        field,
        metric,
        help,
    }
}

/// The field the SYN-cookie watch reads.
const SYNCOOKIES_SENT: &str = "SyncookiesSent";

/// The TcpExt counters seqwatch re-exports: handshake abuse, SYN floods and accept-queue
/// starvation. A fixed set, so the series are bounded.
pub const TCPEXT_COUNTERS: [TcpExtCounter; 12] = [
    counter(
        "TCPChallengeACK",
        "seqwatch_tcpext_tcp_challenge_ack_total",
        "TcpExt TCPChallengeACK: challenge ACKs sent (RFC 5961) for in-window RSTs, SYNs \
         and out-of-window ACKs.",
    ),
    counter(
        "TCPSYNChallenge",
        "seqwatch_tcpext_tcp_syn_challenge_total",
        "TcpExt TCPSYNChallenge: challenge ACKs sent in answer to a SYN on an established \
         connection (RFC 5961 section 4).",
    ),
    counter(
        "TCPReqQFullDrop",
        "seqwatch_tcpext_tcp_req_q_full_drop_total",
        "TcpExt TCPReqQFullDrop: SYNs dropped because a SYN queue was full and SYN cookies \
         were off.",
    ),
    counter(
        "TCPReqQFullDoCookies",
        "seqwatch_tcpext_tcp_req_q_full_do_cookies_total",
        "TcpExt TCPReqQFullDoCookies: SYNs answered with a SYN cookie because a SYN queue \
         was full (or cookies are forced).",
    ),
    counter(
        "EmbryonicRsts",
        "seqwatch_tcpext_embryonic_rsts_total",
        "TcpExt EmbryonicRsts: RSTs received for connections still in SYN_RECV.",
    ),
    counter(
        "ListenOverflows",
        "seqwatch_tcpext_listen_overflows_total",
        "TcpExt ListenOverflows: handshakes dropped because a listener's accept queue was full.",
    ),
    counter(
        "ListenDrops",
        "seqwatch_tcpext_listen_drops_total",
        "TcpExt ListenDrops: SYNs and handshake completions a listener dropped, for any \
         reason (includes ListenOverflows).",
    ),
    counter(
        SYNCOOKIES_SENT,
        "seqwatch_tcpext_syncookies_sent_total",
        "TcpExt SyncookiesSent: SYN-ACKs sent with a SYN cookie as ISN.",
    ),
    counter(
        "SyncookiesRecv",
        "seqwatch_tcpext_syncookies_recv_total",
        "TcpExt SyncookiesRecv: ACKs that carried a valid SYN cookie.",
    ),
    counter(
        "SyncookiesFailed",
        "seqwatch_tcpext_syncookies_failed_total",
        "TcpExt SyncookiesFailed: ACKs to a listener whose SYN cookie did not check out.",
    ),
    counter(
        "TCPBacklogDrop",
        "seqwatch_tcpext_tcp_backlog_drop_total",
        "TcpExt TCPBacklogDrop: segments dropped because a socket's backlog was full.",
    ),
    counter(
        "TCPAbortOnData",
        "seqwatch_tcpext_tcp_abort_on_data_total",
        "TcpExt TCPAbortOnData: connections reset because data arrived after the \
         application closed them.",
    ),
];

/// Parses the `Prefix: names…` / `Prefix: values…` line pairs of /proc/net/netstat.
pub fn parse(text: &str) -> HashMap<String, u64> {
    let mut counters = HashMap::new();
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let (Some((prefix, names)), Some((_, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(value) = value.parse() {
                counters.insert(format!("{prefix}{name}"), value);
            }
        }
    }
    counters
}

/// The TcpExt counters of one reading of /proc/net/netstat.
pub struct TcpExt(HashMap<String, u64>);

impl TcpExt {
    pub fn parse(text: &str) -> Self {
        TcpExt(parse(text))
    }

    /// The counter's value; `None` when this kernel does not have it.
    pub fn get(&self, field: &str) -> Option<u64> {
        self.0.get(&format!("TcpExt{field}")).copied()
    }

    /// The exported counters this kernel lacks.
    pub fn missing(&self) -> impl Iterator<Item = &'static TcpExtCounter> + '_ {
        TCPEXT_COUNTERS
            .iter()
            .filter(|counter| self.get(counter.field).is_none())
    }
}

/// This namespace's TcpExt counters, or `None` if /proc/net/netstat cannot be read.
pub fn read_tcpext() -> Option<TcpExt> {
    std::fs::read_to_string(NETSTAT)
        .ok()
        .map(|text| TcpExt::parse(&text))
}

/// The calling thread's namespace's netstat. Not /proc/net: that is /proc/self/net, the
/// namespace of the process's main thread, whatever namespace the caller has entered.
const THREADS_NETSTAT: &str = "/proc/thread-self/net/netstat";

/// The netstat of the network namespace it was opened in, kept open: each read rereads it from
/// the start, in that namespace wherever the reader runs. It keeps the namespace alive.
pub struct NetstatFile(File);

impl NetstatFile {
    /// Opens the netstat of the calling thread's network namespace.
    pub fn open_here() -> io::Result<Self> {
        File::open(THREADS_NETSTAT).map(NetstatFile)
    }

    pub fn read(&self) -> io::Result<TcpExt> {
        let mut file = &self.0;
        file.seek(SeekFrom::Start(0))?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        Ok(TcpExt::parse(&text))
    }
}

/// The netstat files of the other namespaces followed, by `netns` label: what
/// `seqwatch_netns_tcpext_*` reads at each scrape.
#[derive(Clone, Default)]
pub struct NetnsNetstats(Arc<Mutex<BTreeMap<String, NetstatFile>>>);

impl NetnsNetstats {
    /// Exports `file`'s counters under `netns="label"` until the returned entry is dropped.
    pub fn add(&self, label: String, file: NetstatFile) -> NetnsNetstat {
        lock(&self.0).insert(label.clone(), file);
        NetnsNetstat {
            label,
            netstats: self.clone(),
        }
    }
}

/// One namespace's netstat in [`NetnsNetstats`]; dropping it closes the file and ends its
/// series.
pub struct NetnsNetstat {
    label: String,
    netstats: NetnsNetstats,
}

impl Drop for NetnsNetstat {
    fn drop(&mut self) {
        lock(&self.netstats.0).remove(&self.label);
    }
}

/// The re-exported TcpExt counters, read from /proc/net/netstat at each scrape: the kernel's
/// counters are monotonic for the namespace's lifetime, so its totals are the counters.
/// A counter this kernel lacks is absent, not 0.
pub struct TcpExtCollector {
    /// One per counter of [`TCPEXT_COUNTERS`], in order.
    descs: Vec<Desc>,
    /// The other namespaces' files, for `seqwatch_netns_tcpext_*`; `None`: this namespace's.
    netns: Option<NetnsNetstats>,
}

impl TcpExtCollector {
    /// Says once, in the log, which counters this kernel does not have.
    pub fn new() -> anyhow::Result<Self> {
        match read_tcpext() {
            Some(tcpext) => {
                for counter in tcpext.missing() {
                    log::warn!(
                        "this kernel has no TcpExt {} in {NETSTAT}: {} is not exported",
                        counter.field,
                        counter.metric
                    );
                }
            }
            None => log::warn!("cannot read {NETSTAT}: no seqwatch_tcpext_* metrics"),
        }
        let descs = TCPEXT_COUNTERS
            .iter()
            .map(|counter| {
                Desc::new(
                    counter.metric.into(),
                    counter.help.into(),
                    vec![],
                    HashMap::new(),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(TcpExtCollector { descs, netns: None })
    }

    /// The same counters of the other namespaces in `netstats`, one series per namespace:
    /// `seqwatch_netns_tcpext_*_total{netns}`.
    pub fn for_namespaces(netstats: NetnsNetstats) -> anyhow::Result<Self> {
        let descs = TCPEXT_COUNTERS
            .iter()
            .map(|counter| {
                Desc::new(
                    counter.metric.replacen("seqwatch_", "seqwatch_netns_", 1),
                    format!("{} in another network namespace.", counter.metric),
                    vec!["netns".into()],
                    HashMap::new(),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(TcpExtCollector {
            descs,
            netns: Some(netstats),
        })
    }
}

impl Collector for TcpExtCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let readings: Vec<(Option<String>, TcpExt)> = match &self.netns {
            None => read_tcpext()
                .map(|tcpext| (None, tcpext))
                .into_iter()
                .collect(),
            // A namespace whose file fails to read now is left out of this scrape only.
            Some(netstats) => lock(&netstats.0)
                .iter()
                .filter_map(|(label, file)| Some((Some(label.clone()), file.read().ok()?)))
                .collect(),
        };
        families(&self.descs, &readings)
    }
}

/// One counter family per exported counter that some reading has, one series per reading
/// that has it: labelled `netns` when the reading names its namespace.
fn families(descs: &[Desc], readings: &[(Option<String>, TcpExt)]) -> Vec<MetricFamily> {
    TCPEXT_COUNTERS
        .iter()
        .zip(descs)
        .filter_map(|(exported, desc)| {
            let metrics: Vec<Metric> = readings
                .iter()
                .filter_map(|(netns, tcpext)| {
                    let value = tcpext.get(exported.field)?;
                    let mut counter = Counter::default();
                    // f64 is exact up to 2^53: centuries of any of these counters.
                    counter.set_value(value as f64);
                    let mut metric = Metric::default();
                    metric.set_counter(counter);
                    if let Some(netns) = netns {
                        let mut label = LabelPair::default();
                        label.set_name("netns".into());
                        label.set_value(netns.clone());
                        metric.set_label(vec![label]);
                    }
                    Some(metric)
                })
                .collect();
            if metrics.is_empty() {
                return None;
            }
            let mut family = MetricFamily::default();
            family.set_name(desc.fq_name.clone());
            family.set_help(desc.help.clone());
            family.set_field_type(MetricType::COUNTER);
            family.set_metric(metrics);
            Some(family)
        })
        .collect()
}

fn syncookies_sent() -> Option<u64> {
    read_tcpext()?.get(SYNCOOKIES_SENT)
}

/// Tells whether the host sent SYN cookies since the previous poll: SYN-ACKs seen then may
/// be cookies, and the scorer says so.
pub struct SyncookieWatch {
    last: Option<u64>,
    active: bool,
}

impl SyncookieWatch {
    /// Starts watching from the counter's current value.
    pub fn start() -> Self {
        SyncookieWatch {
            last: syncookies_sent(),
            active: false,
        }
    }

    pub fn poll(&mut self) {
        let now = syncookies_sent();
        self.active = matches!((self.last, now), (Some(before), Some(after)) if after > before);
        self.last = now;
    }

    pub fn active(&self) -> bool {
        self.active
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder as _, Registry, TextEncoder};

    use super::*;

    #[test]
    fn pairs_names_with_values_per_prefix() {
        let text =
            "TcpExt: SyncookiesSent SyncookiesRecv\nTcpExt: 7 3\nIpExt: InOctets\nIpExt: 99\n";
        let counters = parse(text);
        assert_eq!(counters["TcpExtSyncookiesSent"], 7);
        assert_eq!(counters["TcpExtSyncookiesRecv"], 3);
        assert_eq!(counters["IpExtInOctets"], 99);
    }

    #[test]
    fn reads_this_hosts_netstat() {
        assert!(syncookies_sent().is_some(), "TcpExt SyncookiesSent missing");
    }

    #[test]
    fn exports_present_counters_as_counters_and_leaves_missing_ones_out() {
        // A kernel without the challenge-ACK counters.
        let tcpext =
            TcpExt::parse("TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 5 12 13\n");
        let missing: Vec<_> = tcpext.missing().map(|c| c.field).collect();
        assert!(missing.contains(&"TCPChallengeACK"));
        assert!(!missing.contains(&"ListenOverflows"));
        assert_eq!(missing.len(), TCPEXT_COUNTERS.len() - 3);
        let own = TcpExtCollector::new().unwrap();
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&families(&own.descs, &[(None, tcpext)]), &mut text)
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("# TYPE seqwatch_tcpext_listen_overflows_total counter\n"));
        assert!(text.contains("\nseqwatch_tcpext_listen_overflows_total 12\n"));
        assert!(text.contains("\nseqwatch_tcpext_listen_drops_total 13\n"));
        assert!(text.contains("\nseqwatch_tcpext_syncookies_sent_total 5\n"));
        assert!(!text.contains("challenge"), "{text}");
    }

    #[test]
    fn the_collector_registers_and_reads_this_namespace() {
        let registry = Registry::new();
        registry
            .register(Box::new(TcpExtCollector::new().unwrap()))
            .unwrap();
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|family| family.name().to_owned())
            .collect();
        assert!(names.contains(&"seqwatch_tcpext_listen_overflows_total".to_owned()));
    }

    #[test]
    fn another_namespaces_counters_carry_its_label_until_its_entry_is_dropped() {
        let netstats = NetnsNetstats::default();
        let collector = TcpExtCollector::for_namespaces(netstats.clone()).unwrap();
        let entry = netstats.add("4026532000".into(), NetstatFile::open_here().unwrap());
        let families = collector.collect();
        let overflows = families
            .iter()
            .find(|f| f.name() == "seqwatch_netns_tcpext_listen_overflows_total")
            .unwrap();
        let label = &overflows.get_metric()[0].get_label()[0];
        assert_eq!((label.name(), label.value()), ("netns", "4026532000"));
        assert_eq!(families.len(), TCPEXT_COUNTERS.len());
        drop(entry);
        assert!(collector.collect().is_empty());
        assert!(lock(&netstats.0).is_empty(), "the file is closed");
    }
}
