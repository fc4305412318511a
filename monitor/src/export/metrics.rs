//! The daemon's metric registry. Each part registers its own metrics here, once, at start;
//! the registry remembers what was registered (name, type, labels, meaning) for the generated
//! reference in docs/metrics.md, and what must be brought up to date before each scrape
//! (counters that mirror the kernel programs' own).

use std::{fmt::Write as _, sync::Mutex};

use prometheus::{
    Encoder as _, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    TextEncoder, core::Collector,
};

use crate::util::lock;

/// A metric's type, as the exposition format names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A metric type of the prometheus crate, and its kind.
pub trait Metric: Collector + Clone + 'static {
    const KIND: Kind;
}

impl Metric for IntCounter {
    const KIND: Kind = Kind::Counter;
}
impl Metric for IntCounterVec {
    const KIND: Kind = Kind::Counter;
}
impl Metric for prometheus::Counter {
    const KIND: Kind = Kind::Counter;
}
impl Metric for IntGauge {
    const KIND: Kind = Kind::Gauge;
}
impl Metric for IntGaugeVec {
    const KIND: Kind = Kind::Gauge;
}
impl Metric for Gauge {
    const KIND: Kind = Kind::Gauge;
}
impl Metric for GaugeVec {
    const KIND: Kind = Kind::Gauge;
}

/// One registered metric, as the reference lists it.
struct Documented {
    name: String,
    kind: Kind,
    labels: Vec<String>,
    help: String,
}

type Refresh = Box<dyn Fn() + Send + Sync>;

pub struct Registry {
    prometheus: prometheus::Registry,
    documented: Mutex<Vec<Documented>>,
    before_scrape: Mutex<Vec<Refresh>>,
    documents_all: bool,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            prometheus: prometheus::Registry::new(),
            documented: Mutex::new(Vec::new()),
            before_scrape: Mutex::new(Vec::new()),
            documents_all: false,
        }
    }
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// The registry the reference is generated from: with the metrics that only some hosts
    /// export (see [`Registry::documents_all`]).
    pub fn for_reference() -> Self {
        Registry {
            documents_all: true,
            ..Registry::default()
        }
    }

    /// True for the reference's registry: register also what this host would not export.
    pub fn documents_all(&self) -> bool {
        self.documents_all
    }

    /// Registers `metric` and returns it, for its owner to update.
    pub fn register<M: Metric>(&self, metric: M) -> anyhow::Result<M> {
        self.register_collector(metric.clone(), M::KIND)?;
        Ok(metric)
    }

    /// Registers a collector of its own making, whose every family is of `kind`.
    pub fn register_collector(
        &self,
        collector: impl Collector + 'static,
        kind: Kind,
    ) -> anyhow::Result<()> {
        let documented: Vec<Documented> = collector
            .desc()
            .into_iter()
            .map(|desc| Documented {
                name: desc.fq_name.clone(),
                kind,
                labels: desc.variable_labels.clone(),
                help: desc.help.clone(),
            })
            .collect();
        self.prometheus.register(Box::new(collector))?;
        lock(&self.documented).extend(documented);
        Ok(())
    }

    pub fn counter(&self, name: &str, help: &str) -> anyhow::Result<IntCounter> {
        self.register(IntCounter::new(name, help)?)
    }

    pub fn counters(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> anyhow::Result<IntCounterVec> {
        self.register(IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    pub fn gauge(&self, name: &str, help: &str) -> anyhow::Result<IntGauge> {
        self.register(IntGauge::new(name, help)?)
    }

    pub fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> anyhow::Result<IntGaugeVec> {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels)?)
    }

    pub fn float_gauges(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> anyhow::Result<GaugeVec> {
        self.register(GaugeVec::new(Opts::new(name, help), labels)?)
    }

    /// What a scrape would show now, as metric families.
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.prometheus.gather()
    }

    /// Runs `refresh` before each scrape: for metrics that mirror what the kernel counts.
    pub fn before_scrape(&self, refresh: impl Fn() + Send + Sync + 'static) {
        lock(&self.before_scrape).push(Box::new(refresh));
    }

    /// Brings the mirrors up to date and renders the text exposition format.
    pub fn render(&self) -> String {
        for refresh in lock(&self.before_scrape).iter() {
            refresh();
        }
        let mut out = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.prometheus.gather(), &mut out) {
            log::error!("encoding metrics: {err}");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// The Markdown table of docs/metrics.md: every registered metric, by name.
    pub fn reference(&self) -> String {
        let mut documented = lock(&self.documented);
        documented.sort_by(|a, b| a.name.cmp(&b.name));
        let mut table = String::from("| metric | type | labels | meaning |\n|---|---|---|---|\n");
        for metric in documented.iter() {
            let labels: Vec<String> = metric.labels.iter().map(|l| format!("`{l}`")).collect();
            let labels = if labels.is_empty() {
                "—".to_owned()
            } else {
                labels.join(", ")
            };
            let _ = writeln!(
                table,
                "| `{}` | {} | {labels} | {} |",
                metric.name,
                metric.kind.as_str(),
                metric.help.replace('|', "\\|")
            );
        }
        table
    }
}
