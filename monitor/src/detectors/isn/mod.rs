//! The SYN-ACK sampler: the classifiers put every SYN-ACK's ISN and options in one ring buffer
//! per CPU; this detector turns the records into samples, feeds one ISN scorer per service
//! (under the service cap), scores them within a CPU budget, and publishes the scores of the
//! services with a label (`/metrics`) and every service's report (`/api/v1/services`).

pub mod budget;
pub mod metrics;
pub mod sample;
pub mod services;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::Context as _;
use axum::{Json, routing::get};
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use prometheus::IntCounter;
use seqwatch_common::synack::{self, SynAckRecord};

use crate::{
    detectors::detector::{Context, Detector},
    export::metrics::Registry,
    host::netstat::SyncookieWatch,
    kernel::{
        loader::{Globals, per_cpu_rings},
        reader::{self, RING_SCHEDULE, Reader, Rings},
        records::decode,
    },
    scorer::ScorerConfig,
    settings::{Directions, NetnsMode, Settings},
    util::lock,
};
use budget::ScoringBudget;
use metrics::IsnMetrics;
use sample::{Sample, SampleCounter, SampleLog};
use services::ServiceTable;

/// The detector, before it starts.
pub struct Isn {
    metrics: IsnMetrics,
    scorer: ScorerConfig,
    samples_ingress: bool,
    sample_log: Option<PathBuf>,
}

impl Isn {
    pub fn new(settings: &Settings, registry: &Registry) -> anyhow::Result<Self> {
        Ok(Isn {
            metrics: IsnMetrics::new(registry)?,
            scorer: ScorerConfig {
                guesses: settings.guesses,
                window: settings.window,
                ..ScorerConfig::default()
            },
            // Following other namespaces samples their veths' ingress.
            samples_ingress: settings.direction != Directions::Egress
                || settings.netns == NetnsMode::All,
            sample_log: settings.sample_log.clone(),
        })
    }
}

impl Detector for Isn {
    fn name(&self) -> &'static str {
        "SYN-ACK sample"
    }

    /// The SYN-ACK origin check's seed: off (0) unless ingress SYN-ACKs are sampled; then
    /// random, so that a remote host cannot aim SYNs at a given SYN record.
    fn configure(&mut self, globals: &mut Globals) -> anyhow::Result<()> {
        let seed = if self.samples_ingress {
            rand::random::<u32>() | 1
        } else {
            0
        };
        globals.set("SYNACK_ORIGIN_SEED", &seed);
        Ok(())
    }

    fn start(self: Box<Self>, ctx: &mut Context<'_>) -> anyhow::Result<()> {
        let rings = sample_rings(ctx.object.ebpf_mut())?;
        self.metrics
            .mirror(ctx.shared.packet_counters.clone(), ctx.registry);
        let cap = ctx.shared.max_services;
        let mut table = ServiceTable::new(cap, self.scorer, ctx.service_labels());
        if let Some(log) = &ctx.shared.event_log {
            table.log_events_to(log.clone());
        }
        table.name_namespaces_with(ctx.shared.namespaces.clone());
        let table = Arc::new(Mutex::new(table));
        let served = table.clone();
        ctx.api.add(
            "/api/v1/services",
            "per-service ISN scores, JSON",
            get(move || {
                let services = lock(&served).served_reports();
                async move { Json(serde_json::json!({ "services": services })) }
            }),
        );
        let reader = SampleReader {
            counter: SampleCounter::new(
                self.metrics.samples_received.clone(),
                ctx.shared.interfaces.clone(),
            ),
            options_malformed: ctx.shared.packets.parse_error("tcp_bad_options"),
            metrics: self.metrics,
            table,
            records: Vec::new(),
            sample_log: self
                .sample_log
                .as_deref()
                .map(SampleLog::create)
                .transpose()?,
            syncookies: SyncookieWatch::start(),
            budget: ScoringBudget::new(Instant::now()),
        };
        ctx.tasks.spawn(
            "SYN-ACK sample",
            Rings::register(rings)?,
            RING_SCHEDULE,
            None,
            reader,
        );
        Ok(())
    }
}

/// Creates this host's SYN-ACK ring buffers, one per possible CPU (see
/// `seqwatch_common::synack::RING_BYTES_TOTAL`), and puts them where the classifiers find them.
pub fn sample_rings(ebpf: &mut Ebpf) -> anyhow::Result<Vec<RingBuf<MapData>>> {
    per_cpu_rings(
        ebpf,
        "SYNACK_RINGS",
        "synack_ring",
        synack::ring_bytes_per_cpu,
    )
}

/// Adds every record waiting in `rings` to `records`, and puts them oldest first: each ring is
/// in its own CPU's order, runs which the stable sort finds and merges.
pub fn take_records<'a>(
    rings: impl IntoIterator<Item = &'a mut RingBuf<MapData>>,
    records: &mut Vec<SynAckRecord>,
) {
    reader::drain(rings, usize::MAX, |item| match decode(item) {
        Some(record) => records.push(record),
        None => log::warn!("short ring-buffer record of {} bytes ignored", item.len()),
    });
    records.sort_by_key(|record| record.ts_ns);
}

/// The detector's task.
struct SampleReader {
    metrics: IsnMetrics,
    table: Arc<Mutex<ServiceTable>>,
    counter: SampleCounter,
    options_malformed: IntCounter,
    /// The records of one read.
    records: Vec<SynAckRecord>,
    sample_log: Option<SampleLog>,
    syncookies: SyncookieWatch,
    budget: ScoringBudget,
}

impl Reader for SampleReader {
    /// Every record waiting: the rings hold about 18 700 records, far more than a busy
    /// server's new connections between two polls.
    fn read(&mut self, rings: &mut Rings) -> anyhow::Result<()> {
        self.counter.update_names();
        self.records.clear();
        take_records(rings.iter_mut(), &mut self.records);
        let syncookies = self.syncookies.active();
        let mut table = lock(&self.table);
        for record in &self.records {
            let sample = Sample::from_record(record);
            if sample.options_malformed {
                self.options_malformed.inc();
            }
            self.counter.count(&sample);
            if let Some(log) = self.sample_log.as_mut() {
                log.write(&sample).context("writing the sample log")?;
            }
            if let Some(evicted) = table.ingest(&sample, syncookies) {
                self.metrics.service_evictions.inc();
                self.metrics.remove_scores(&evicted.to_string());
            }
        }
        Ok(())
    }

    /// Scores what the budget allows, between reads.
    fn polled(&mut self) -> anyhow::Result<()> {
        self.budget.run(&mut lock(&self.table), &self.metrics);
        Ok(())
    }

    fn refresh(&mut self) -> anyhow::Result<()> {
        self.syncookies.poll();
        let mut table = lock(&self.table);
        table.rank(&self.metrics, Instant::now());
        self.metrics.services.set(table.tracked() as i64);
        self.metrics.scoring_backlog.set(table.backlog() as i64);
        drop(table);
        self.stop()
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(log) = self.sample_log.as_mut() {
            log.flush()?;
        }
        Ok(())
    }
}
