//! The TLS record-framing check's userspace half: tells the kernel which ports carry TLS and
//! what it may copy, reads its events, and counts plaintext on encrypted sessions and session
//! ends per service (services labelled by evidence, [`crate::export::labels::admission`]; the
//! rest `other`). A plaintext event also becomes one `tls_plaintext_suspected` line in the
//! event log, naming the followed namespace (`--netns all`) serving the service if one does;
//! its payload bytes never do, unless `--tls-log-prefix` asked for the first 16 in hex.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use aya::{Ebpf, maps::Array};
use prometheus::{IntCounter, IntCounterVec};
use seqwatch_common::{
    Direction,
    tls::{
        CONFIG_DETECT_HELLO, CONFIG_LOG_PREFIX, EVENT_PLAINTEXT, EVENT_SESSION_END,
        PORT_CONFIGURED, SessionEnd, TlsCounter, TlsEvent,
    },
};
use serde::Serialize;

use crate::{
    detectors::detector::{Context, Detector},
    export::{
        event_log::EventLog,
        labels::{ServiceLabels, label_of},
        metrics::Registry,
    },
    host::netns::NetnsReport,
    kernel::{
        counters::{Mirrors, PerCpuCounters},
        namespaces::FollowedNamespaces,
        reader::{RING_SCHEDULE, Reader, Rings},
        records::{decode, socket_address},
    },
    settings::Settings,
    util::clock::Clock,
};

/// Events handled per read at most.
const MAX_EVENTS_PER_READ: usize = 4096;

/// What `seqwatch run` asks of the check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsOptions {
    /// Flows with either port here are checked from their first byte (or resync point).
    pub ports: Vec<u16>,
    /// Also check flows on other ports whose first payload from this host is a hello.
    pub detect_hello: bool,
    /// Put the first 16 bytes where a record header had to start into the event log, in hex.
    pub log_prefix: bool,
}

impl TlsOptions {
    pub fn new(settings: &Settings) -> Self {
        TlsOptions {
            ports: settings.tls_ports.0.clone(),
            detect_hello: settings.tls_detect_hello,
            log_prefix: settings.tls_log_prefix,
        }
    }
}

/// The settings' defaults.
impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions::new(&Settings::default())
    }
}

/// The detector, before it starts.
pub struct Tls {
    metrics: TlsMetrics,
    options: TlsOptions,
}

impl Tls {
    pub fn new(settings: &Settings, registry: &Registry) -> anyhow::Result<Self> {
        Ok(Tls {
            metrics: TlsMetrics::new(registry)?,
            options: TlsOptions::new(settings),
        })
    }
}

impl Detector for Tls {
    fn name(&self) -> &'static str {
        "TLS event"
    }

    /// Configures the check before anything is attached.
    fn start(self: Box<Self>, ctx: &mut Context<'_>) -> anyhow::Result<()> {
        let name = self.name();
        configure(ctx.object.ebpf_mut(), &self.options)?;
        let counters = Arc::new(ctx.object.take::<PerCpuCounters>("TLS_COUNTERS")?);
        self.metrics.mirror(counters, ctx.registry);
        let reader = TlsEventReader {
            metrics: self.metrics,
            services: ctx.service_labels(),
            session_ends: HashMap::new(),
            log: ctx.shared.event_log.clone(),
            namespaces: ctx.shared.namespaces.clone(),
            clock: Clock::now(),
        };
        let events = Rings::one(ctx.object.take("TLS_EVENTS")?)?;
        ctx.tasks.spawn(name, events, RING_SCHEDULE, None, reader);
        Ok(())
    }
}

/// The check's metrics.
pub struct TlsMetrics {
    pub plaintext_suspected: IntCounterVec,
    pub sessions: IntCounterVec,
    records_checked: IntCounter,
    tracking_lost: IntCounter,
    resynced: IntCounter,
    events_dropped: IntCounter,
}

impl TlsMetrics {
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let counter = |name: &str, help: &str| registry.counter(name, help);
        let vec = |name: &str, help: &str, labels: &[&str]| registry.counters(name, help, labels);
        Ok(TlsMetrics {
            plaintext_suspected: vec(
                "seqwatch_tls_plaintext_suspected_total",
                "Bytes that are not a TLS record header where one had to start, sent on a TLS \
                 session, by service (services without a label of their own are \"other\").",
                &["service"],
            )?,
            sessions: vec(
                "seqwatch_tls_sessions_total",
                "TLS sessions ended, by service and how they ended (fin, alert, reset, \
                 reset_after_data, plaintext_then_collapse).",
                &["service", "end"],
            )?,
            records_checked: counter(
                "seqwatch_tls_records_checked_total",
                "TLS record headers the kernel checked on egress.",
            )?,
            tracking_lost: counter(
                "seqwatch_tls_tracking_lost_total",
                "Times a TLS flow's record boundaries became unknown (a gap, a violation, or a \
                 flow first seen mid-stream).",
            )?,
            resynced: counter(
                "seqwatch_tls_resyncs_total",
                "TLS flows resynchronised on a segment starting with a record header.",
            )?,
            events_dropped: counter(
                "seqwatch_tls_events_dropped_total",
                "TLS events lost in the kernel because their ring buffer was full.",
            )?,
        })
    }

    /// The check's kernel counters, mirrored before each scrape.
    fn mirror(&self, counters: Arc<PerCpuCounters>, registry: &Registry) {
        let mut mirrors = Mirrors::new(counters);
        mirrors.add(
            TlsCounter::RecordsChecked as u32,
            self.records_checked.clone(),
        );
        mirrors.add(TlsCounter::TrackingLost as u32, self.tracking_lost.clone());
        mirrors.add(TlsCounter::Resynced as u32, self.resynced.clone());
        mirrors.add(
            TlsCounter::EventsDropped as u32,
            self.events_dropped.clone(),
        );
        registry.before_scrape(move || mirrors.refresh());
    }
}

/// Writes the ports and switches into the loaded object's maps, before anything is attached
/// (also used by the benchmark and the crafted-frame tests, on objects of their own).
pub fn configure(ebpf: &mut Ebpf, options: &TlsOptions) -> anyhow::Result<()> {
    let mut filter = Array::<_, u64>::try_from(map(ebpf, "TLS_PORT_FILTER")?)?;
    for &port in &options.ports {
        filter.set(u32::from(port), &PORT_CONFIGURED, 0)?;
    }
    let mut flags = 0;
    if options.detect_hello {
        flags |= CONFIG_DETECT_HELLO;
    }
    if options.log_prefix {
        flags |= CONFIG_LOG_PREFIX;
    }
    Array::<_, u32>::try_from(map(ebpf, "TLS_CONFIG")?)?.set(0, &flags, 0)?;
    Ok(())
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .with_context(|| format!("the eBPF object has no {name} map"))
}

/// One kernel TLS event, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    Plaintext(PlaintextSuspected),
    SessionEnded {
        service: SocketAddr,
        end: SessionEnd,
    },
}

/// A `tls_plaintext_suspected` line of the event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlaintextSuspected {
    /// RFC 3339, UTC.
    pub time: String,
    pub kind: &'static str,
    /// The TLS server's side of the flow (this host's, or the remote server's).
    pub service: SocketAddr,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub direction: &'static str,
    pub ifindex: u32,
    /// Sequence number where a record header had to start.
    pub seq: u32,
    /// Bytes from `offset_from` to `seq`.
    pub stream_offset: u32,
    /// `flow_start` (the first payload byte) or `resync` (the last resynchronisation point).
    pub offset_from: &'static str,
    /// The bytes found there, in hex (only with `--tls-log-prefix`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_hex: Option<String>,
}

impl Finding {
    /// `None` for an event this build does not know (never expected from our program).
    pub fn from_event(event: &TlsEvent, clock: &Clock) -> Option<Finding> {
        let source = socket_address(event.family, event.saddr, event.sport);
        let destination = socket_address(event.family, event.daddr, event.dport);
        let direction = Direction::from_u8(event.direction)?;
        let (local, remote) = match direction {
            Direction::Egress => (source, destination),
            Direction::Ingress => (destination, source),
        };
        let service = if event.local_is_server != 0 {
            local
        } else {
            remote
        };
        match event.kind {
            EVENT_PLAINTEXT => Some(Finding::Plaintext(PlaintextSuspected {
                time: clock.rfc3339(event.ts_ns),
                kind: "tls_plaintext_suspected",
                service,
                source,
                destination,
                direction: direction.as_str(),
                ifindex: event.ifindex,
                seq: event.seq,
                stream_offset: event.stream_offset,
                offset_from: if event.from_start != 0 {
                    "flow_start"
                } else {
                    "resync"
                },
                prefix_hex: (event.prefix_len > 0).then(|| {
                    let len = usize::from(event.prefix_len).min(event.prefix.len());
                    event.prefix[..len]
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect()
                }),
            })),
            EVENT_SESSION_END => Some(Finding::SessionEnded {
                service,
                end: SessionEnd::from_u8(event.end)?,
            }),
            _ => None,
        }
    }
}

/// The detector's task.
struct TlsEventReader {
    metrics: TlsMetrics,
    services: ServiceLabels,
    session_ends: HashMap<(Option<SocketAddr>, SessionEnd), IntCounter>,
    log: Option<EventLog>,
    /// Names the followed namespace serving a service in its event-log line.
    namespaces: FollowedNamespaces,
    clock: Clock,
}

/// A `tls_plaintext_suspected` line as written: the finding, and the followed namespace
/// (`--netns all`) serving its service, if one is.
#[derive(Serialize)]
struct LogLine<'a> {
    #[serde(flatten)]
    plaintext: &'a PlaintextSuspected,
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<NetnsReport>,
}

impl TlsEventReader {
    fn handle(&mut self, finding: &Finding) {
        match finding {
            // The service is the TLS server's side: on a local address, this host served it.
            Finding::Plaintext(plaintext) => {
                let service = label_of(self.services.admit_server(plaintext.service));
                self.metrics
                    .plaintext_suspected
                    .with_label_values(&[service.as_str()])
                    .inc();
                if let Some(log) = &self.log {
                    log.write_line(&LogLine {
                        plaintext,
                        netns: self.namespaces.netns_of(plaintext.service.ip()),
                    });
                }
            }
            Finding::SessionEnded { service, end } => {
                // One per TLS connection: the handle is kept (at most the cap plus `other`,
                // times the five ends), so no address is formatted per event.
                let admitted = self.services.admit_server(*service);
                let sessions = &self.metrics.sessions;
                self.session_ends
                    .entry((admitted, *end))
                    .or_insert_with(|| {
                        sessions.with_label_values(&[label_of(admitted).as_str(), end.as_str()])
                    })
                    .inc();
            }
        }
    }

    /// Removes the series of services that lost their label.
    fn forget_withdrawn(&mut self) {
        for service in self.services.update() {
            let label = service.to_string();
            let _ = self
                .metrics
                .plaintext_suspected
                .remove_label_values(&[&label]);
            let sessions = &self.metrics.sessions;
            self.session_ends.retain(|(admitted, end), _| {
                let keep = *admitted != Some(service);
                if !keep {
                    let _ = sessions.remove_label_values(&[&label, end.as_str()]);
                }
                keep
            });
        }
    }
}

impl Reader for TlsEventReader {
    /// At most [`MAX_EVENTS_PER_READ`]: the rest wait for the next read, so that the (single)
    /// runtime thread is never held for long.
    fn read(&mut self, rings: &mut Rings) -> anyhow::Result<()> {
        rings.drain(MAX_EVENTS_PER_READ, |item| {
            match decode::<TlsEvent>(item).and_then(|e| Finding::from_event(&e, &self.clock)) {
                Some(finding) => self.handle(&finding),
                None => log::warn!("undecodable TLS event of {} bytes ignored", item.len()),
            }
        });
        Ok(())
    }

    fn refresh(&mut self) -> anyhow::Result<()> {
        self.forget_withdrawn();
        Ok(())
    }
}

/// The Markdown table of session ends in `docs/anomalies.md`, generated from `SessionEnd`.
pub fn session_end_table() -> String {
    let mut table = String::from("| `end` | when |\n|---|---|\n");
    for end in SessionEnd::ALL {
        table.push_str(&format!("| `{}` | {} |\n", end.as_str(), end.description()));
    }
    table
}

#[cfg(test)]
mod tests {
    use seqwatch_common::synack::FAMILY_IPV4;

    use super::*;

    /// `docs/anomalies.md` carries the table generated from the code: it cannot drift.
    #[test]
    fn the_docs_table_is_the_generated_one() {
        let docs = include_str!("../../../../docs/anomalies.md");
        let table = session_end_table();
        assert!(
            docs.contains(&table),
            "docs/anomalies.md is out of date; put this table in its TLS section:\n\n{table}"
        );
    }

    fn event(kind: u8, direction: Direction, local_is_server: u8) -> TlsEvent {
        TlsEvent {
            ts_ns: 0,
            saddr: [192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [198, 51, 100, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            prefix: *b"GET / HTTP/1.1\r\n",
            ifindex: 3,
            seq: 1000,
            stream_offset: 517,
            sport: 443,
            dport: 51_000,
            family: FAMILY_IPV4,
            direction: direction as u8,
            kind,
            end: SessionEnd::ResetAfterData as u8,
            local_is_server,
            from_start: 1,
            prefix_len: 0,
            _pad: 0,
        }
    }

    #[test]
    fn the_service_is_the_tls_server_side() {
        let clock = Clock::now();
        let server: SocketAddr = "192.0.2.1:443".parse().unwrap();
        let client: SocketAddr = "198.51.100.7:51000".parse().unwrap();
        let ended = |direction, local_is_server| match Finding::from_event(
            &event(EVENT_SESSION_END, direction, local_is_server),
            &clock,
        ) {
            Some(Finding::SessionEnded { service, end }) => (service, end),
            other => panic!("{other:?}"),
        };
        // We sent 192.0.2.1:443 → client as the server; an ingress packet from the server
        // (source 192.0.2.1:443) to us, the client, names the remote server.
        assert_eq!(
            ended(Direction::Egress, 1),
            (server, SessionEnd::ResetAfterData)
        );
        assert_eq!(ended(Direction::Ingress, 0).0, server);
        assert_eq!(ended(Direction::Egress, 0).0, client);
    }

    #[test]
    fn payload_bytes_appear_only_with_the_prefix_switch() {
        let clock = Clock::now();
        let mut raw = event(EVENT_PLAINTEXT, Direction::Egress, 1);
        let Some(Finding::Plaintext(line)) = Finding::from_event(&raw, &clock) else {
            panic!("a plaintext finding");
        };
        assert_eq!(line.prefix_hex, None);
        let json = serde_json::to_string(&line).unwrap();
        assert!(!json.contains("prefix"), "{json}");
        assert!(json.contains(r#""stream_offset":517"#), "{json}");
        assert!(json.contains(r#""offset_from":"flow_start""#), "{json}");
        raw.prefix_len = 4;
        let Some(Finding::Plaintext(line)) = Finding::from_event(&raw, &clock) else {
            panic!("a plaintext finding");
        };
        assert_eq!(line.prefix_hex.as_deref(), Some("47455420"));
    }

    #[test]
    fn unknown_kinds_and_ends_are_refused() {
        let clock = Clock::now();
        assert_eq!(
            Finding::from_event(&event(7, Direction::Egress, 1), &clock),
            None
        );
        let mut raw = event(EVENT_SESSION_END, Direction::Egress, 1);
        raw.end = SessionEnd::COUNT as u8;
        assert_eq!(Finding::from_event(&raw, &clock), None);
    }
}
