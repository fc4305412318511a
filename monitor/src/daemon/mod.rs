//! `seqwatch run`: make the detectors, let them set the kernel object's globals, load it,
//! start the detectors, attach the classifiers, serve, drop privileges; then follow the
//! interfaces and the signals; on SIGINT/SIGTERM take everything back out of the kernel and
//! let each detector read what its programs left.

use std::{
    num::NonZeroUsize,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use prometheus::IntGaugeVec;
use sd_notify::NotifyState;
use seqwatch_common::Direction;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::Notify,
};

use crate::{
    detectors::{
        self,
        detector::{Context, Shared},
    },
    export::{
        event_log::{EventLog, EventLogMetrics},
        http::{self, Api},
        labels::admission::{LabelMetrics, LabelPolicy},
        metrics::{Kind, Registry},
        web::{HttpMetrics, WebSecurity},
    },
    host::{
        netstat::TcpExtCollector,
        posture::{self, PostureWatch},
    },
    kernel::{
        SYN_RECORDER,
        attacher::{Attacher, Hook, InterfaceNames},
        caps::{self, KernelFeatures},
        counters::PerCpuCounters,
        interfaces::{LinkEvents, Selection},
        loader::{AttachMetrics, Globals, LoadedObject},
        packets::{PACKET_COUNTERS, PacketMetrics},
        reader::Tasks,
        synack_program,
    },
    settings::{ConfigError, Directions, NetnsMode, Settings},
    util::{lock, ticks},
};

/// The metrics that are the daemon's own rather than a detector's.
struct DaemonMetrics {
    attach: AttachMetrics,
    packets: PacketMetrics,
    labels: LabelMetrics,
    event_log: EventLogMetrics,
    http: HttpMetrics,
    /// 1 if a hardening check is as recommended, 0 if not; absent when unreadable.
    posture: IntGaugeVec,
}

impl DaemonMetrics {
    fn new(registry: &Registry) -> anyhow::Result<Self> {
        let build_info = registry.gauges(
            "seqwatch_build_info",
            "Seqwatch version; always 1.",
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register_collector(TcpExtCollector::new()?, Kind::Counter)?;
        Ok(DaemonMetrics {
            attach: AttachMetrics::new(registry)?,
            packets: PacketMetrics::new(registry)?,
            labels: LabelMetrics::new(registry)?,
            event_log: EventLogMetrics::new(registry)?,
            http: HttpMetrics::new(registry)?,
            posture: registry.gauges(
                "seqwatch_posture_check",
                "1 if the hardening check's sysctls are as recommended, 0 if not (see \
                     `seqwatch posture`); absent when unreadable.",
                &["check", "scope"],
            )?,
        })
    }
}

/// The classifiers to attach to every monitored interface, egress first: sampling ingress
/// SYN-ACKs needs the SYNs that leave (the SYN-ACK origin check), so ingress-only sampling
/// records them on egress.
fn hooks(direction: Directions) -> &'static [Hook] {
    const SAMPLE_EGRESS: Hook = (Direction::Egress, synack_program(Direction::Egress));
    const SAMPLE_INGRESS: Hook = (Direction::Ingress, synack_program(Direction::Ingress));
    const RECORD_SYNS: Hook = (Direction::Egress, SYN_RECORDER);
    match direction {
        Directions::Egress => &[SAMPLE_EGRESS],
        Directions::Ingress => &[RECORD_SYNS, SAMPLE_INGRESS],
        Directions::Both => &[SAMPLE_EGRESS, SAMPLE_INGRESS],
    }
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let security = match &settings.web_config {
        Some(path) => WebSecurity::from_file(path).map_err(|err| ConfigError(err.to_string()))?,
        None => WebSecurity::plain(),
    };
    caps::require_privileges()?;
    KernelFeatures::detect().require(settings.attach_mode)?;
    let registry = Arc::new(Registry::default());
    let metrics = DaemonMetrics::new(&registry)?;
    let mut detectors = detectors::all(&settings, &registry)?;
    let mut globals = Globals::default();
    for detector in &mut detectors {
        detector.configure(&mut globals)?;
    }
    let mut object = LoadedObject::load(settings.attach_mode, &globals, metrics.attach.clone())?;
    let packet_counters = Arc::new(object.take::<PerCpuCounters>(PACKET_COUNTERS)?);
    metrics.packets.mirror(packet_counters.clone(), &registry);
    let policy = LabelPolicy::shared(settings.max_services, metrics.labels.clone());
    // The listeners of now, before the first event is counted.
    lock(&policy).tick(Instant::now());
    let event_log = settings
        .event_log
        .as_deref()
        .map(|path| {
            EventLog::open(
                path,
                settings.event_log_max_bytes,
                metrics.event_log.clone(),
            )
        })
        .transpose()?;
    let interfaces = InterfaceNames::default();
    let mut tasks = Tasks::default();
    let mut api = Api::default();
    let mut ctx = Context {
        object: &mut object,
        registry: &registry,
        tasks: &mut tasks,
        api: &mut api,
        shared: Shared {
            policy: policy.clone(),
            max_services: NonZeroUsize::new(settings.max_services)
                .context("max_services must be at least 1")?,
            event_log,
            packet_counters,
            packets: metrics.packets.clone(),
            interfaces: interfaces.clone(),
            listener_opened: Arc::new(Notify::new()),
            listener_loss: None,
            namespaces: Default::default(),
        },
    };
    for detector in detectors {
        detector.start(&mut ctx)?;
    }
    let selection = if settings.interfaces.is_empty() {
        Selection::AllUp
    } else {
        Selection::Named(settings.interfaces.clone())
    };
    let mut link_events = LinkEvents::subscribe()?;
    let follows_others = settings.netns == NetnsMode::All;
    let hooks = hooks(settings.direction);
    let mut attacher = Attacher::new(selection, hooks, follows_others, interfaces);
    attacher.require_named_interfaces().await?;
    attacher.sync(&mut object).await?;
    let server = http::serve(
        settings.listen,
        registry.clone(),
        api,
        &security,
        metrics.http.clone(),
    )
    .await?;
    let url = format!("{}://{}/metrics", security.scheme(), server.local_addr);
    log::info!("serving {url}");
    // Everything that needs privileges (or root's file access) is done: drop them.
    caps::drop_after_attach(follows_others)?;
    notify_systemd(&[
        NotifyState::Ready,
        NotifyState::Status(&format!("attached; serving {url}")),
    ]);
    let mut each_second = ticks::interval(Duration::from_secs(1));
    // Its first tick is immediate: the posture is exported from the start.
    let mut posture_refresh = ticks::interval(posture::REFRESH);
    let mut posture = PostureWatch::default();
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            event = link_events.next() => {
                if event.is_none() {
                    anyhow::bail!("the rtnetlink event socket closed");
                }
                attacher.sync(&mut object).await?;
            }
            _ = each_second.tick() => {
                attacher.reattach_lost(&mut object).await?;
                lock(&policy).tick(Instant::now());
            }
            _ = posture_refresh.tick() => posture.refresh(&metrics.posture),
            err = tasks.failed() => return Err(err),
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    log::info!("stopping: detaching every program");
    notify_systemd(&[NotifyState::Stopping]);
    object.detach_all();
    tasks.stop().await
}

/// Every metric a daemon with every detector registers, as the table of docs/metrics.md.
pub fn metrics_reference() -> anyhow::Result<String> {
    let registry = Registry::for_reference();
    DaemonMetrics::new(&registry)?;
    detectors::all(&Settings::default(), &registry)?;
    Ok(registry.reference())
}

/// Tells systemd (Type=notify) about start-up and shutdown; a no-op outside systemd.
fn notify_systemd(states: &[NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        log::warn!("cannot notify systemd: {err}");
    }
}

#[cfg(test)]
mod tests {
    /// docs/metrics.md carries the table generated from the registry: it cannot drift.
    #[test]
    fn the_metrics_reference_is_the_generated_one() {
        let docs = include_str!("../../../docs/metrics.md");
        let table = super::metrics_reference().unwrap();
        assert!(
            docs.contains(&table),
            "docs/metrics.md is out of date; replace its table with:\n\n{table}"
        );
    }
}
