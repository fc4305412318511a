//! `seqwatch run`: load, attach, read the ring buffers, score, serve /metrics, and take
//! everything back out of the kernel on SIGINT/SIGTERM.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    num::NonZeroUsize,
    path::PathBuf,
    sync::{Arc, Mutex},
    task::Poll,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use sd_notify::NotifyState;
use seqwatch_common::{Direction, synack::SynAckRecord};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::Notify,
};

use crate::{
    admission::{LabelPolicy, SharedPolicy},
    caps::{self, KernelFeatures},
    config::{self, ConfigError},
    crash::AnomalyHistory,
    handshake::{self, EventLog, ServiceLabels},
    host::netstat::SyncookieWatch,
    host::posture::PostureWatch,
    http,
    interfaces::{self, LinkEvents, Selection},
    listener_counts::{self, PortCounters},
    listeners::{self, ListenerOptions, SharedReport},
    metrics::Metrics,
    probes::{self, AttachMode, KernelCounters, Probes},
    scorer::ScorerConfig,
    synack::{Sample, SampleCounter, SampleLog, ServiceTable},
    tcp_events,
    tls::{self, PortList, TlsOptions},
    top_sources::{SharedTopSources, TopSources},
    util::{lock, ticks},
    web::WebSecurity,
};

/// How often the SYN-ACK ring buffers are drained when the kernel has not woken us (it does
/// when one crosses an eighth full): together they hold about 18 700 records (104 bytes and the
/// ring's 8-byte header each), 50 ms of 370 000 SYN-ACKs/s spread over the CPUs. Each poll is a
/// wakeup of the process, which on a busy host costs more than reading a few thousand records.
const RINGBUF_POLL: Duration = Duration::from_millis(50);

/// Scoring a full window takes tens of milliseconds, so with many busy services it could
/// starve the ring-buffer reader: it gets at most this share of one CPU, in slices between
/// drains, stalest service first, each service at most every `synack::RESCORE_AFTER` (longer
/// for a service whose scoring takes long: `ServiceTable::score_stalest`). What waits is
/// `seqwatch_scoring_backlog`.
const SCORING_SHARE: f64 = 0.25;
/// Scoring stops for this poll once a slice has run this long (one service may take longer).
const SCORING_SLICE: Duration = Duration::from_millis(5);

/// How often the hardening sysctls are read again (cheap: a few dozen small files).
const POSTURE_REFRESH: Duration = Duration::from_secs(60);

/// The port /metrics listens on by default.
pub const DEFAULT_PORT: u16 = 10045;

/// Arguments of `seqwatch run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Interface to monitor (repeatable). Default: every up, non-loopback interface,
    /// including ones that appear later.
    #[arg(long = "interface", short = 'i', value_name = "NAME")]
    pub interfaces: Vec<String>,
    /// Which SYN-ACKs to sample: this host's own (egress), remote servers' (ingress: only
    /// answers to SYNs that left by the interface), or both.
    #[arg(long, value_enum, default_value_t = Directions::Egress)]
    pub direction: Directions,
    /// Address for /metrics, the landing page and the JSON API (/api/v1/…).
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)))]
    pub listen: SocketAddr,
    /// How to attach the classifiers.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub attach_mode: AttachMode,
    #[arg(long, help = config::MAX_SERVICES.help(),
          default_value_t = NonZeroUsize::new(config::MAX_SERVICES.default).expect("non-zero"),
          value_parser = |text: &str| config::MAX_SERVICES.parse(text).and_then(non_zero))]
    pub max_services: NonZeroUsize,
    #[arg(long, help = config::GUESSES.help(), default_value_t = config::GUESSES.default,
          value_parser = |text: &str| config::GUESSES.parse(text))]
    pub guesses: u64,
    #[arg(long, help = config::WINDOW.help(), default_value_t = config::WINDOW.default,
          value_parser = |text: &str| config::WINDOW.parse(text))]
    pub window: usize,
    /// Also write every SYN-ACK sample to this file as one JSON line.
    #[arg(long, value_name = "FILE")]
    pub sample_log: Option<PathBuf>,
    /// Write every handshake anomaly as one JSON line to this file (`-`: stdout), at most a
    /// burst of 10 then 1/s per source and kind. Stateful checks need `--direction both`.
    #[arg(long, value_name = "FILE|-")]
    pub event_log: Option<PathBuf>,
    #[arg(long, value_name = "BYTES", help = config::EVENT_LOG_MAX_BYTES.help(),
          default_value_t = config::EVENT_LOG_MAX_BYTES.default,
          value_parser = |text: &str| config::EVENT_LOG_MAX_BYTES.parse(text))]
    pub event_log_max_bytes: u64,
    #[arg(long, value_name = "SECONDS", help = config::LISTENER_LOSS_WINDOW.help(),
          default_value_t = config::LISTENER_LOSS_WINDOW.default,
          value_parser = |text: &str| config::LISTENER_LOSS_WINDOW.parse(text))]
    pub listener_loss_window: u64,
    #[arg(long, value_name = "K", help = config::TOP_SOURCES.help(),
          default_value_t = config::TOP_SOURCES.default,
          value_parser = |text: &str| config::TOP_SOURCES.parse(text))]
    pub top_sources: usize,
    #[arg(long, value_name = "SECONDS", help = config::ANOMALY_WINDOW.help(),
          default_value_t = config::ANOMALY_WINDOW.default,
          value_parser = |text: &str| config::ANOMALY_WINDOW.parse(text))]
    pub anomaly_window: u64,
    #[arg(long, value_name = "SECONDS", help = config::UNRESPONSIVE_AFTER.help(),
          default_value_t = config::UNRESPONSIVE_AFTER.default,
          value_parser = |text: &str| config::UNRESPONSIVE_AFTER.parse(text))]
    pub unresponsive_after: u64,
    /// TCP ports carrying TLS: every record header this host sends on them is checked
    /// (comma-separated; an empty list checks none).
    #[arg(long, value_name = "PORT,…", default_value = "443,465,636,853,993,995,8443",
          value_parser = tls::parse_ports)]
    pub tls_ports: PortList,
    /// Also check flows on other ports whose first payload from this host is a TLS hello.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub tls_detect_hello: bool,
    /// Put the first 16 bytes found where a TLS record header had to start into the event
    /// log, in hex (off: payload bytes never leave the kernel).
    #[arg(long)]
    pub tls_log_prefix: bool,
    /// TLS and basic auth for the HTTP endpoints: an exporter-toolkit web-config YAML file.
    #[arg(long, value_name = "FILE")]
    pub web_config: Option<PathBuf>,
    /// Configuration file (TOML, see docs/config.md); flags given as well override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

fn non_zero(value: usize) -> Result<NonZeroUsize, String> {
    NonZeroUsize::new(value).ok_or_else(|| "expected more than 0".to_owned())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Directions {
    Egress,
    Ingress,
    Both,
}

/// A classifier to attach to every monitored interface, and where.
type Hook = (Direction, &'static str);

const fn sample(direction: Direction) -> Hook {
    (direction, probes::synack_program(direction))
}

impl Directions {
    /// The classifiers, egress first: sampling ingress SYN-ACKs needs the SYNs that leave
    /// (the SYN-ACK origin check), so ingress-only sampling records them on egress.
    fn hooks(self) -> &'static [Hook] {
        const SAMPLE_EGRESS: Hook = sample(Direction::Egress);
        const SAMPLE_INGRESS: Hook = sample(Direction::Ingress);
        const RECORD_SYNS: Hook = (Direction::Egress, probes::SYN_RECORDER);
        match self {
            Directions::Egress => &[SAMPLE_EGRESS],
            Directions::Ingress => &[RECORD_SYNS, SAMPLE_INGRESS],
            Directions::Both => &[SAMPLE_EGRESS, SAMPLE_INGRESS],
        }
    }
}

/// What the HTTP handlers read.
pub struct Shared {
    pub metrics: Metrics,
    pub counters: KernelCounters,
    pub services: Mutex<ServiceTable>,
    pub top_sources: SharedTopSources,
    /// The latest listener and owner report (`/api/v1/owners`).
    pub owners: SharedReport,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let security = match &args.web_config {
        Some(path) => WebSecurity::from_file(path).map_err(|err| ConfigError(err.to_string()))?,
        None => WebSecurity::plain(),
    };
    caps::require_privileges()?;
    KernelFeatures::detect().require(args.attach_mode)?;
    let kernel_layout = tcp_events::KernelLayout::read();
    let mut probes = Probes::load(
        args.attach_mode,
        &tcp_events::KernelLayout::config(&kernel_layout),
        probes::synack_origin_seed(args.direction != Directions::Egress),
    )?;
    let rings = probes.take_synack_rings()?;
    let scorer = ScorerConfig {
        guesses: args.guesses,
        window: args.window,
        ..ScorerConfig::default()
    };
    let metrics = Metrics::new()?;
    let policy = LabelPolicy::shared(args.max_services.get(), metrics.labels.clone());
    // The listeners of now, before the first event is counted.
    lock(&policy).tick(Instant::now());
    let scored_labels = ServiceLabels::new(args.max_services, policy.clone());
    let shared = Arc::new(Shared {
        metrics,
        counters: probes.take_synack_counters()?,
        services: Mutex::new(ServiceTable::new(args.max_services, scorer, scored_labels)),
        top_sources: TopSources::shared(args.top_sources, Duration::from_secs(args.anomaly_window)),
        owners: SharedReport::default(),
    });
    start_engines(&mut probes, &shared, &args, &policy, kernel_layout)?;
    let selection = if args.interfaces.is_empty() {
        Selection::AllUp
    } else {
        Selection::Named(args.interfaces.clone())
    };
    let mut link_events = LinkEvents::subscribe()?;
    let mut attacher = Attacher {
        selection,
        hooks: args.direction.hooks(),
        names: SampleCounter::default(),
        lost: BTreeMap::new(),
    };
    attacher.require_named_interfaces().await?;
    attacher.sync(&mut probes, &shared.metrics).await?;
    let server = http::serve(args.listen, shared.clone(), &security).await?;
    let url = format!("{}://{}/metrics", security.scheme(), server.local_addr);
    log::info!("serving {url}");

    let mut sample_log = args
        .sample_log
        .as_deref()
        .map(SampleLog::create)
        .transpose()?;
    let mut rings = SynAckRings::register(rings)?;
    // Everything that needs privileges (or root's file access) is done: drop them.
    caps::drop_after_attach()?;
    notify_systemd(&[
        NotifyState::Ready,
        NotifyState::Status(&format!("attached; serving {url}")),
    ]);
    let mut syncookies = SyncookieWatch::start();
    let mut scoring = ScoringBudget::new(Instant::now());
    let mut publish = ticks::interval(Duration::from_secs(1));
    // Its first tick is immediate: the posture is exported from the start.
    let mut posture_refresh = ticks::interval(POSTURE_REFRESH);
    let mut posture = PostureWatch::default();
    // The kernel wakes us only when a ring buffer fills up (an eighth): drain them on a timer.
    let mut poll = ticks::interval(RINGBUF_POLL);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            woken = rings.woken() => {
                woken?;
                drain(&mut rings, &shared, &mut attacher.names, sample_log.as_mut(), syncookies.active())?;
            }
            _ = poll.tick() => {
                drain(&mut rings, &shared, &mut attacher.names, sample_log.as_mut(), syncookies.active())?;
                scoring.run(&mut lock(&shared.services), &shared.metrics);
            }
            event = link_events.next() => {
                if event.is_none() {
                    anyhow::bail!("the rtnetlink event socket closed");
                }
                attacher.sync(&mut probes, &shared.metrics).await?;
            }
            _ = publish.tick() => {
                attacher.reattach_lost(&mut probes, &shared.metrics).await?;
                syncookies.poll();
                let now = Instant::now();
                lock(&policy).tick(now);
                let mut services = lock(&shared.services);
                services.rank(&shared.metrics, now);
                shared.metrics.services.set(services.tracked() as i64);
                shared.metrics.scoring_backlog.set(services.backlog() as i64);
                drop(services);
                if let Some(log) = sample_log.as_mut() {
                    log.flush()?;
                }
            }
            _ = posture_refresh.tick() => posture.refresh(&shared.metrics.posture),
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    log::info!("stopping: detaching every program");
    notify_systemd(&[NotifyState::Stopping]);
    probes.detach_all();
    drain(
        &mut rings,
        &shared,
        &mut attacher.names,
        sample_log.as_mut(),
        syncookies.active(),
    )?;
    if let Some(log) = sample_log.as_mut() {
        log.flush()?;
    }
    Ok(())
}

/// The anomaly reader, the TLS event reader, the kernel TCP event reader and the listener
/// watch run as their own tasks, sharing the event log (and the first and third the anomaly
/// history); stateful handshake checks only when both directions are on, per-port counters
/// only for what the attachments see.
fn start_engines(
    probes: &mut Probes,
    shared: &Shared,
    args: &RunArgs,
    policy: &SharedPolicy,
    kernel_layout: anyhow::Result<tcp_events::KernelLayout>,
) -> anyhow::Result<()> {
    let metrics = &shared.metrics;
    if args.direction == Directions::Both {
        probes.enable_handshake_tracking()?;
    }
    let event_log = args
        .event_log
        .as_deref()
        .map(|path| {
            let log_metrics = metrics.handshake.event_log.clone();
            EventLog::open(path, args.event_log_max_bytes, log_metrics)
        })
        .transpose()?;
    if let Some(log) = &event_log {
        lock(&shared.services).log_events_to(log.clone());
    }
    let labels = || ServiceLabels::new(args.max_services, policy.clone());
    let window = Duration::from_secs(args.listener_loss_window);
    let history = AnomalyHistory::shared(window);
    let options = handshake::EngineOptions {
        event_log: event_log.clone(),
        max_services: args.max_services,
        policy: policy.clone(),
        history: history.clone(),
        top_sources: shared.top_sources.clone(),
        anomaly_window: Duration::from_secs(args.anomaly_window),
    };
    handshake::start(
        probes.take_anomaly_events()?,
        probes.take_handshake_counters()?,
        probes.take_kernel_guesses()?,
        metrics.handshake.clone(),
        &options,
    )?;
    let listener_opened = Arc::new(Notify::new());
    let listener_options = ListenerOptions {
        unresponsive_after: Duration::from_secs(args.unresponsive_after),
        event_log: event_log.clone(),
        listener_opened: listener_opened.clone(),
    };
    let tls_options = TlsOptions {
        ports: args.tls_ports.0.clone(),
        detect_hello: args.tls_detect_hello,
        log_prefix: args.tls_log_prefix,
    };
    tls::start(
        probes,
        metrics.tls.clone(),
        &tls_options,
        labels(),
        event_log.clone(),
    )?;
    let options = tcp_events::TcpEventOptions {
        services: labels(),
        event_log,
        history,
        listener_opened,
    };
    tcp_events::start(probes, metrics, options, kernel_layout)?;
    // After the tracepoints: completions are counted only if inet_sock_set_state attached.
    let sources = listener_counts::Sources {
        syns_received: args.direction != Directions::Egress,
        synacks_sent: args.direction != Directions::Ingress,
        handshakes_completed: probes.is_tracepoint_attached("inet_sock_set_state"),
    };
    let counts = PortCounters::new(probes.take_listener_counts()?, sources);
    listeners::start(
        &metrics.listeners,
        listener_options,
        shared.owners.clone(),
        counts,
    )
}

/// The per-CPU SYN-ACK ring buffers, each registered for the kernel's wakeups, and the records
/// of one drain.
struct SynAckRings {
    rings: Vec<AsyncFd<RingBuf<MapData>>>,
    records: Vec<SynAckRecord>,
}

impl SynAckRings {
    fn register(rings: Vec<RingBuf<MapData>>) -> anyhow::Result<SynAckRings> {
        let rings = rings
            .into_iter()
            .map(|ring| {
                // SAFETY: the AsyncFd owns the ring buffer, so the fd outlives its registration.
                unsafe { AsyncFd::register(ring) }
                    .map_err(|err| anyhow::anyhow!("polling the ring buffers: {err}"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(SynAckRings {
            rings,
            records: Vec::new(),
        })
    }

    /// Resolves when the kernel has woken the reader of any ring.
    async fn woken(&self) -> std::io::Result<()> {
        std::future::poll_fn(|cx| {
            for ring in &self.rings {
                if let Poll::Ready(ready) = ring.poll_read_ready(cx) {
                    return Poll::Ready(ready.map(|mut guard| guard.clear_ready()));
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Every record waiting, oldest first.
    fn take(&mut self) -> &[SynAckRecord] {
        self.records.clear();
        probes::take_synack_records(
            self.rings.iter_mut().map(AsyncFd::get_mut),
            &mut self.records,
        );
        &self.records
    }
}

/// Reads every record waiting in the ring buffers.
fn drain(
    rings: &mut SynAckRings,
    shared: &Shared,
    names: &mut SampleCounter,
    mut sample_log: Option<&mut SampleLog>,
    syncookies: bool,
) -> anyhow::Result<()> {
    let mut services = lock(&shared.services);
    for record in rings.take() {
        let sample = Sample::from_record(record);
        if sample.options_malformed {
            shared.metrics.options_malformed.inc();
        }
        names.count(&shared.metrics, &sample);
        if let Some(log) = sample_log.as_deref_mut() {
            log.write(&sample)?;
        }
        if let Some(evicted) = services.ingest(&sample, syncookies) {
            shared.metrics.service_evictions.inc();
            shared.metrics.isn.remove(&evicted.to_string());
        }
    }
    Ok(())
}

/// Meters the scorer's CPU time: `SCORING_SHARE` of the wall time, accrued up to one
/// second's worth, spent in slices of about `SCORING_SLICE`.
struct ScoringBudget {
    /// Seconds of scoring available; negative after a service that took longer.
    available: f64,
    accrued_at: Instant,
}

impl ScoringBudget {
    fn new(now: Instant) -> Self {
        ScoringBudget {
            available: SCORING_SHARE,
            accrued_at: now,
        }
    }

    fn accrue(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.accrued_at).as_secs_f64();
        self.available = (self.available + elapsed * SCORING_SHARE).min(SCORING_SHARE);
        self.accrued_at = now;
    }

    /// Scores the stalest waiting services while budget and this slice last.
    fn run(&mut self, services: &mut ServiceTable, metrics: &Metrics) {
        let started = Instant::now();
        self.accrue(started);
        while self.available > 0.0 && started.elapsed() < SCORING_SLICE {
            let before = Instant::now();
            if services.score_stalest(metrics, before).is_none() {
                break;
            }
            let spent = before.elapsed().as_secs_f64();
            self.available -= spent;
            metrics.scoring_seconds.inc_by(spent);
        }
    }
}

/// Keeps the attachments in step with the interfaces of this network namespace.
struct Attacher {
    selection: Selection,
    hooks: &'static [Hook],
    names: SampleCounter,
    /// Netlink filters removed from outside, until attached again, with the attempts so far
    /// (one a second; the first is logged).
    lost: BTreeMap<(u32, Direction), u32>,
}

impl Attacher {
    /// A named interface that does not exist is a configuration error, said at once.
    async fn require_named_interfaces(&self) -> anyhow::Result<()> {
        let Selection::Named(names) = &self.selection else {
            return Ok(());
        };
        let present = interfaces::list().await?;
        for name in names {
            if !present.values().any(|interface| interface.name == *name) {
                anyhow::bail!(
                    "interface {name:?} does not exist in this network namespace \
                     (see `ip link`; run seqwatch with nsenter --net=… for another namespace)"
                );
            }
        }
        Ok(())
    }

    async fn sync(&mut self, probes: &mut Probes, metrics: &Metrics) -> anyhow::Result<()> {
        let present = interfaces::list().await?;
        for interface in present.values().filter(|i| self.selection.wants(i)) {
            self.names.name_interface(interface.index, &interface.name);
            for &(direction, program) in self.hooks {
                if probes.is_attached(interface.index, direction) {
                    continue;
                }
                let key = (interface.index, direction);
                let attempts = self.lost.get_mut(&key).map(|attempts| {
                    *attempts += 1;
                    *attempts
                });
                if attempts == Some(1) {
                    log::warn!("{program} on {} was removed from outside", interface.name);
                }
                let attached = if direction == Direction::Ingress
                    && !probes.is_attached(interface.index, Direction::Egress)
                {
                    Err(anyhow::anyhow!(
                        "left off: the SYNs its SYN-ACKs must answer are recorded on the \
                         interface's egress, where the classifier is not attached"
                    ))
                } else {
                    probes.attach(interface.index, direction, program)
                };
                let labels = [program, interface.name.as_str(), direction.as_str()];
                match attached {
                    Ok(()) => log::info!("attached {program} to {}", interface.name),
                    Err(err) if attempts.is_some_and(|n| n > 1) => {
                        log::debug!("{program} on {}: {err:#}", interface.name)
                    }
                    Err(err) => log::warn!("{program} on {}: {err:#}", interface.name),
                }
                if probes.is_attached(interface.index, direction) && attempts.is_some() {
                    self.lost.remove(&key);
                    metrics.program_reattached.with_label_values(&labels).inc();
                }
                metrics
                    .program_attached
                    .with_label_values(&labels)
                    .set(i64::from(probes.is_attached(interface.index, direction)));
            }
        }
        self.forget_vanished(&present, probes, metrics);
        Ok(())
    }

    /// Netlink mode: attaches again what was removed from under us (reported 0 meanwhile).
    async fn reattach_lost(
        &mut self,
        probes: &mut Probes,
        metrics: &Metrics,
    ) -> anyhow::Result<()> {
        for key in probes.forget_lost_filters() {
            self.lost.insert(key, 0);
        }
        if self.lost.is_empty() {
            return Ok(());
        }
        self.sync(probes, metrics).await
    }

    fn forget_vanished(
        &mut self,
        present: &std::collections::BTreeMap<u32, interfaces::Interface>,
        probes: &mut Probes,
        metrics: &Metrics,
    ) {
        for (index, name) in self.names.vanished(present) {
            for &(direction, program) in self.hooks {
                probes.detach(index, direction);
                self.lost.remove(&(index, direction));
                let labels = [program, name.as_str(), direction.as_str()];
                let _ = metrics.program_attached.remove_label_values(&labels);
                let _ = metrics.program_reattached.remove_label_values(&labels);
            }
            log::info!("interface {name} is gone");
        }
    }
}

/// Tells systemd (Type=notify) about start-up and shutdown; a no-op outside systemd.
fn notify_systemd(states: &[NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        log::warn!("cannot notify systemd: {err}");
    }
}

#[cfg(test)]
mod tests {
    use seqwatch_common::synack::FAMILY_IPV4;

    use super::*;

    #[test]
    fn the_scoring_budget_accrues_a_share_of_wall_time_up_to_a_cap() {
        let start = Instant::now();
        let mut budget = ScoringBudget::new(start);
        budget.available = -0.5;
        budget.accrue(start + Duration::from_secs(1));
        assert!((budget.available + 0.5 - SCORING_SHARE).abs() < 1e-9);
        budget.accrue(start + Duration::from_secs(100));
        assert_eq!(budget.available, SCORING_SHARE);
    }

    #[test]
    fn an_overdrawn_budget_leaves_services_waiting() {
        let metrics = Metrics::new().unwrap();
        let mut services = crate::synack::tests::table(4, &[]);
        let record = crate::synack::tests::record(FAMILY_IPV4, 443, &[]);
        services.ingest(&Sample::from_record(&record), false);
        let mut budget = ScoringBudget::new(Instant::now());
        budget.available = -1.0;
        budget.run(&mut services, &metrics);
        assert_eq!(services.backlog(), 1);
        budget.available = SCORING_SHARE;
        budget.run(&mut services, &metrics);
        assert_eq!(services.backlog(), 0);
        assert!(metrics.scoring_seconds.get() > 0.0);
    }
}
