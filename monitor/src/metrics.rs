//! Every metric the daemon exports. Label values come from fixed sets (reasons, directions,
//! posture checks), from this host's interfaces, or from services bounded by the service
//! cap — never from unbounded attacker-controlled values. The TcpExt counters are read at
//! scrape time by [`TcpExtCollector`].

use prometheus::{
    Encoder as _, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use seqwatch_common::synack::Counter;

use crate::{
    admission::LabelMetrics, handshake::HandshakeMetrics, host::netstat::TcpExtCollector,
    listeners::ListenerMetrics, probes::KernelCounters, tcp_events::TcpEventMetrics,
    tls::TlsMetrics, web::HttpMetrics,
};

pub struct Metrics {
    registry: Registry,
    pub program_attached: IntGaugeVec,
    /// Netlink filters attached again after something else removed them.
    pub program_reattached: IntCounterVec,
    pub synack_samples: IntCounterVec,
    pub services: IntGauge,
    pub service_evictions: IntCounter,
    /// Services whose newest samples are not scored yet (scoring has a CPU budget).
    pub scoring_backlog: IntGauge,
    pub scoring_seconds: prometheus::Counter,
    /// SYN-ACKs whose option list was malformed (summarized in userspace).
    pub options_malformed: IntCounter,
    pub isn: IsnMetrics,
    /// Services labelled by their handshakes ([`crate::admission`]).
    pub labels: LabelMetrics,
    pub handshake: HandshakeMetrics,
    pub tcp: TcpEventMetrics,
    pub listeners: ListenerMetrics,
    pub tls: TlsMetrics,
    pub http: HttpMetrics,
    /// 1 if a hardening check is as recommended, 0 if not; absent when unreadable.
    pub posture: IntGaugeVec,
    kernel: KernelMetrics,
}

/// Per-service ISN scores, of the services with a label ([`crate::admission`]); series are
/// removed when a service loses its label or is evicted.
pub struct IsnMetrics {
    pub samples: IntGaugeVec,
    pub guess_bits: GaugeVec,
    pub attack_feasibility: GaugeVec,
    pub weak: IntGaugeVec,
    pub nmap_sp: IntGaugeVec,
    pub nmap_gcd: IntGaugeVec,
    pub nmap_isr: IntGaugeVec,
}

/// Mirrors of the kernel's per-CPU counters, advanced by the difference at each scrape.
struct KernelMetrics {
    packets_seen: IntCounter,
    synacks: IntCounter,
    ringbuf_dropped: IntCounter,
    non_first_fragments: IntCounter,
    parse_errors: IntCounterVec,
    syns_recorded: IntCounter,
    synacks_not_sampled: IntCounterVec,
}

/// The reasons of `seqwatch_synacks_not_sampled_total`, and their counters.
const NOT_SAMPLED: [(Counter, &str); 2] = [
    (Counter::SynAcksUnsolicited, "unsolicited"),
    (Counter::SynAcksForwarded, "forwarded"),
];

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new("seqwatch_build_info", "Seqwatch version; always 1."),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(build_info))?;
        let kernel = KernelMetrics::new(&registry)?;
        registry.register(Box::new(TcpExtCollector::new()?))?;
        Ok(Metrics {
            program_attached: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "seqwatch_program_attached",
                        "1 while the program is attached to the interface in that direction, \
                         0 if attaching failed.",
                    ),
                    &["program", "interface", "direction"],
                )?,
            )?,
            program_reattached: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "seqwatch_program_reattached_total",
                        "Times the program was attached again after its tc filter or clsact \
                         qdisc was removed from outside (netlink attach mode).",
                    ),
                    &["program", "interface", "direction"],
                )?,
            )?,
            synack_samples: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "seqwatch_synack_samples_total",
                        "SYN-ACK samples received from the kernel.",
                    ),
                    &["interface", "direction"],
                )?,
            )?,
            services: register(
                &registry,
                IntGauge::new("seqwatch_services", "Services currently tracked.")?,
            )?,
            service_evictions: register(
                &registry,
                IntCounter::new(
                    "seqwatch_service_evictions_total",
                    "Services dropped because the service cap was reached (the least recently \
                     seen without a label first).",
                )?,
            )?,
            scoring_backlog: register(
                &registry,
                IntGauge::new(
                    "seqwatch_scoring_backlog",
                    "Services with samples their published scores do not include yet: scoring \
                     gets a quarter of one CPU, stalest service first.",
                )?,
            )?,
            scoring_seconds: register(
                &registry,
                prometheus::Counter::new(
                    "seqwatch_scoring_seconds_total",
                    "Time spent scoring services.",
                )?,
            )?,
            isn: IsnMetrics::new(&registry)?,
            labels: LabelMetrics::new(&registry)?,
            handshake: HandshakeMetrics::new(&registry)?,
            tcp: TcpEventMetrics::new(&registry)?,
            listeners: ListenerMetrics::new(&registry)?,
            tls: TlsMetrics::new(&registry)?,
            http: HttpMetrics::new(&registry)?,
            posture: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "seqwatch_posture_check",
                        "1 if the hardening check's sysctls are as recommended, 0 if not \
                         (see `seqwatch posture`); absent when unreadable.",
                    ),
                    &["check", "scope"],
                )?,
            )?,
            options_malformed: kernel.parse_errors.with_label_values(&["tcp_bad_options"]),
            kernel,
            registry,
        })
    }

    /// Brings the kernel counters up to date and renders the text exposition format.
    pub fn render(&self, counters: &KernelCounters) -> String {
        self.kernel.refresh(counters);
        let mut out = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!("encoding metrics: {err}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl IsnMetrics {
    fn new(registry: &Registry) -> anyhow::Result<Self> {
        let int = |name: &str, help: &str| {
            register(
                registry,
                IntGaugeVec::new(Opts::new(name, help), &["service"])?,
            )
        };
        let float = |name: &str, help: &str| {
            register(
                registry,
                GaugeVec::new(Opts::new(name, help), &["service"])?,
            )
        };
        Ok(IsnMetrics {
            samples: int(
                "seqwatch_isn_samples",
                "ISN samples scored for the service.",
            )?,
            guess_bits: float(
                // Not `_bits`: Prometheus reserves unit suffixes for base units (promtool would
                // say "use bytes"), and this is log2 of a count of ISNs, not a data size.
                "seqwatch_isn_guess_space_log2",
                "log2 of the ISN range a blind attacker must search (the residual spread of the best ISN model, or the next ISN's rank among a recovered generator's candidates): the scorer's guess bits.",
            )?,
            attack_feasibility: float(
                "seqwatch_isn_attack_feasibility",
                "Probability that a blind attacker hits the next ISN within the configured guesses.",
            )?,
            weak: int(
                "seqwatch_isn_weak",
                "1 if the service's ISN generator is judged weak.",
            )?,
            nmap_sp: int(
                "seqwatch_isn_nmap_sp",
                "nmap's sequence predictability index over the last 6 samples (comparison only).",
            )?,
            nmap_gcd: int(
                "seqwatch_isn_nmap_gcd",
                "nmap's GCD of ISN differences over the last 6 samples.",
            )?,
            nmap_isr: int(
                "seqwatch_isn_nmap_isr",
                "nmap's ISN counter rate over the last 6 samples.",
            )?,
        })
    }

    pub fn remove(&self, service: &str) {
        let labels = [service];
        let _ = self.samples.remove_label_values(&labels);
        let _ = self.guess_bits.remove_label_values(&labels);
        let _ = self.attack_feasibility.remove_label_values(&labels);
        let _ = self.weak.remove_label_values(&labels);
        let _ = self.nmap_sp.remove_label_values(&labels);
        let _ = self.nmap_gcd.remove_label_values(&labels);
        let _ = self.nmap_isr.remove_label_values(&labels);
    }
}

impl KernelMetrics {
    fn new(registry: &Registry) -> anyhow::Result<Self> {
        let counter = |name: &str, help: &str| register(registry, IntCounter::new(name, help)?);
        let parse_errors = register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "seqwatch_parse_errors_total",
                    "Packets the classifier could not parse, by reason.",
                ),
                &["reason"],
            )?,
        )?;
        // Every reason is a series from the start, so that rate() sees the first error.
        for (_, reason) in Counter::PARSE_ERRORS {
            parse_errors.with_label_values(&[reason]);
        }
        let synacks_not_sampled = register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "seqwatch_synacks_not_sampled_total",
                    "SYN-ACKs the SYN-ACK origin check kept from the scorer (ingress sampling \
                     on): unsolicited (arriving, answering no SYN that left by their interface) \
                     or forwarded (leaving, judged where they came in).",
                ),
                &["reason"],
            )?,
        )?;
        for (_, reason) in NOT_SAMPLED {
            synacks_not_sampled.with_label_values(&[reason]);
        }
        Ok(KernelMetrics {
            packets_seen: counter(
                "seqwatch_packets_seen_total",
                "Packets the classifiers ran on.",
            )?,
            synacks: counter(
                "seqwatch_synacks_total",
                "SYN-ACKs the sampler took, including ones dropped on a full ring buffer \
                 (not those in seqwatch_synacks_not_sampled_total).",
            )?,
            ringbuf_dropped: counter(
                "seqwatch_ringbuf_dropped_total",
                "SYN-ACK records dropped in the kernel because the ring buffer was full.",
            )?,
            non_first_fragments: counter(
                "seqwatch_non_first_fragments_total",
                "IP fragments after the first, skipped because they carry no TCP header.",
            )?,
            parse_errors,
            syns_recorded: counter(
                "seqwatch_syns_recorded_total",
                "SYNs leaving whose answer the SYN-ACK origin check waits for (ingress sampling \
                 on), retransmissions included.",
            )?,
            synacks_not_sampled,
        })
    }

    fn refresh(&self, counters: &KernelCounters) {
        advance(&self.packets_seen, counters.read(Counter::PacketsSeen));
        advance(&self.synacks, counters.read(Counter::SynAcks));
        advance(
            &self.ringbuf_dropped,
            counters.read(Counter::RingbufDropped),
        );
        advance(
            &self.non_first_fragments,
            counters.read(Counter::NonFirstFragment),
        );
        for (counter, reason) in Counter::PARSE_ERRORS {
            advance(
                &self.parse_errors.with_label_values(&[reason]),
                counters.read(counter),
            );
        }
        advance(&self.syns_recorded, counters.read(Counter::SynsRecorded));
        for (counter, reason) in NOT_SAMPLED {
            advance(
                &self.synacks_not_sampled.with_label_values(&[reason]),
                counters.read(counter),
            );
        }
    }
}

/// Moves a mirror counter up to the kernel's total (which never goes down).
pub(crate) fn advance(mirror: &IntCounter, total: u64) {
    let delta = total.saturating_sub(mirror.get());
    if delta > 0 {
        mirror.inc_by(delta);
    }
}

pub(crate) fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> anyhow::Result<C> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}
