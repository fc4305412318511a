//! Loads the kernel programs and attaches them to interfaces (tcx, or netlink/clsact where tcx
//! is missing), keeping track of everything it attached so that it can take all of it back.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, ArrayOfMaps, Map, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        BtfTracePoint, Program, SchedClassifier, TcAttach, TcAttachType,
        tc::{NlOptions, SchedClassifierLinkId},
    },
    util::KernelVersion,
};
use seqwatch_common::{
    Direction,
    handshake::{protection_ticks, request_lifetime_seconds},
    listener_counts::PortCounts,
    synack::{self, Counter, SynAckRecord},
    tcp_events::TcpEventsConfig,
};

use crate::{
    clsact::Ownership, handshake::HandshakeCounters, spoofing::KernelGuesses,
    tcp_events::TcpEventCounters,
};

/// The eBPF object built by aya-build and embedded in this binary.
pub fn object() -> anyhow::Result<&'static [u8]> {
    let object = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/seqwatch"));
    if object.is_empty() {
        bail!("this binary was built with AYA_BUILD_SKIP=1 and carries no eBPF object");
    }
    Ok(object)
}

/// The classifier that samples SYN-ACKs in each direction.
pub const fn synack_program(direction: Direction) -> &'static str {
    match direction {
        Direction::Egress => "synack_egress",
        Direction::Ingress => "synack_ingress",
    }
}

/// The egress classifier of ingress-only sampling: it records the SYNs leaving, whose answers
/// the SYN-ACK origin check waits for, and nothing else.
pub const SYN_RECORDER: &str = "syn_egress";

/// How classifiers are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// tcx on kernels that have it (6.6+), netlink/clsact otherwise.
    Auto,
    /// tcx links: they vanish with the process.
    Tcx,
    /// A clsact qdisc and a direct-action filter: removed explicitly on exit, and by the next
    /// daemon after a crash (see `clsact`).
    Netlink,
}

struct Attachment {
    program: &'static str,
    link: SchedClassifierLinkId,
    /// Netlink mode: the filter's handle (a `clsact::FilterHandle`).
    filter: Option<u32>,
}

/// The loaded object and every attachment made from it.
pub struct Probes {
    ebpf: Ebpf,
    mode: AttachMode,
    attachments: BTreeMap<(u32, Direction), Attachment>,
    /// Tracepoint programs attached.
    tracepoints: BTreeSet<String>,
    /// Netlink mode: this daemon's owner number and what it knows of the clsact qdiscs.
    ownership: Option<Ownership>,
}

impl Probes {
    /// Loads the embedded object, with the tracepoint programs' view of this kernel and the
    /// SYN-ACK origin check's seed (0: off; see [`synack_origin_seed`]) in its read-only data,
    /// and verifies the classifiers (the tracepoints are verified as they attach).
    pub fn load(
        mode: AttachMode,
        tcp_events: &TcpEventsConfig,
        synack_origin_seed: u32,
    ) -> anyhow::Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .override_global("TCP_EVENTS_CONFIG", tcp_events, true)
            .override_global("SYNACK_ORIGIN_SEED", &synack_origin_seed, true)
            .load(object()?)
            .context(
                "loading the eBPF object failed (needs root or CAP_BPF+CAP_NET_ADMIN+CAP_PERFMON, \
             and a kernel with BTF)",
            )?;
        start_kernel_log(&mut ebpf);
        for program in Direction::ALL
            .map(synack_program)
            .into_iter()
            .chain([SYN_RECORDER])
        {
            classifier(&mut ebpf, program)?
                .load()
                .with_context(|| format!("the verifier rejected {program}"))?;
        }
        let mode = match mode {
            AttachMode::Auto if kernel_has_tcx() => AttachMode::Tcx,
            AttachMode::Auto => AttachMode::Netlink,
            explicit => explicit,
        };
        let ownership = match mode {
            AttachMode::Netlink => Some(Ownership::claim(classifier_names(&ebpf))?),
            AttachMode::Tcx | AttachMode::Auto => None,
        };
        Ok(Probes {
            ebpf,
            mode,
            attachments: BTreeMap::new(),
            tracepoints: BTreeSet::new(),
            ownership,
        })
    }

    pub fn is_attached(&self, ifindex: u32, direction: Direction) -> bool {
        self.attachments.contains_key(&(ifindex, direction))
    }

    /// Attaches a classifier to one interface and direction: the SYN-ACK sampler
    /// ([`synack_program`]) or the SYN recorder ([`SYN_RECORDER`]).
    pub fn attach(
        &mut self,
        ifindex: u32,
        direction: Direction,
        program: &'static str,
    ) -> anyhow::Result<()> {
        let attach_type = match direction {
            Direction::Egress => TcAttachType::Egress,
            Direction::Ingress => TcAttachType::Ingress,
        };
        let mut filter = None;
        let attach = match self.mode {
            AttachMode::Netlink => {
                let options = self.netlink_place(ifindex, direction, program)?;
                filter = Some(options.handle.into());
                TcAttach::Netlink {
                    parent: attach_type.into(),
                    options,
                }
            }
            AttachMode::Tcx | AttachMode::Auto => TcAttach::Tcx {
                attach_type,
                order: Default::default(),
            },
        };
        match classifier(&mut self.ebpf, program)?.attach(ifindex, attach) {
            Ok(link) => {
                let attachment = Attachment {
                    program,
                    link,
                    filter,
                };
                self.attachments.insert((ifindex, direction), attachment);
                Ok(())
            }
            Err(err) => {
                if filter.is_some() {
                    self.release_qdisc(ifindex);
                }
                Err(err).context("attaching the classifier failed")
            }
        }
    }

    /// Netlink mode: the clsact qdisc (added if missing), stale filters removed, and where
    /// `direction`'s filter goes.
    fn netlink_place(
        &mut self,
        ifindex: u32,
        direction: Direction,
        program: &'static str,
    ) -> anyhow::Result<NlOptions> {
        let mine = filters_on(&self.attachments, ifindex);
        let ownership = self
            .ownership
            .as_mut()
            .context("netlink mode without an owner number")?;
        let place = ownership.prepare(ifindex, direction, program, &mine);
        if place.is_err() {
            self.release_qdisc(ifindex);
        }
        place
    }

    /// Takes one attachment back. On a vanished interface the kernel has already done so.
    pub fn detach(&mut self, ifindex: u32, direction: Direction) {
        let Some(attachment) = self.attachments.remove(&(ifindex, direction)) else {
            return;
        };
        if let Ok(program) = classifier(&mut self.ebpf, attachment.program)
            && let Err(err) = program.detach(attachment.link)
        {
            log::debug!(
                "detach from ifindex {ifindex} ({}): {err}",
                direction.as_str()
            );
        }
        if attachment.filter.is_some() {
            self.release_qdisc(ifindex);
        }
    }

    /// Netlink mode, after a filter of ours left `ifindex`: the clsact qdisc goes too if a
    /// seqwatch daemon added it and nothing is left on it.
    fn release_qdisc(&mut self, ifindex: u32) {
        let last = !self.attachments.keys().any(|(index, _)| *index == ifindex);
        if let Some(ownership) = self.ownership.as_mut() {
            ownership.release_qdisc(ifindex, last);
        }
    }

    /// Netlink mode: checks that each filter this daemon attached is still in place (tc, or
    /// any program with CAP_NET_ADMIN, can delete filters and qdiscs), forgets those that are
    /// not so that they can be attached again, and returns them. Stale filters of dead daemons
    /// seen on the way are removed.
    pub fn forget_lost_filters(&mut self) -> Vec<(u32, Direction)> {
        let Some(ownership) = self.ownership.as_mut() else {
            return Vec::new();
        };
        let mut lost = Vec::new();
        for (&(ifindex, direction), attachment) in &self.attachments {
            let Some(handle) = attachment.filter else {
                continue;
            };
            let mine = filters_on(&self.attachments, ifindex);
            let ours = (attachment.program, handle);
            match ownership.is_present(ifindex, direction, ours, &mine) {
                Ok(true) => {}
                Ok(false) => lost.push((ifindex, direction)),
                Err(err) => log::debug!("checking the filters of ifindex {ifindex}: {err:#}"),
            }
        }
        for &(ifindex, direction) in &lost {
            let Some(attachment) = self.attachments.remove(&(ifindex, direction)) else {
                continue;
            };
            if let Ok(program) = classifier(&mut self.ebpf, attachment.program)
                && let Ok(link) = program.take_link(attachment.link)
            {
                // Dropping the link would delete whatever filter stands in its place now; it
                // holds no file descriptor, only the filter's address.
                std::mem::forget(link);
            }
        }
        lost
    }

    pub fn detach_all(&mut self) {
        let keys: Vec<_> = self.attachments.keys().copied().collect();
        for (ifindex, direction) in keys {
            self.detach(ifindex, direction);
        }
    }

    /// The loaded object, for a detector to configure its maps before anything is attached.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Takes a map out of the loaded object, by name (for a reader task to own).
    pub fn take_map(&mut self, name: &str) -> anyhow::Result<aya::maps::Map> {
        self.ebpf
            .take_map(name)
            .with_context(|| format!("the eBPF object has no {name} map"))
    }

    pub fn take_synack_rings(&mut self) -> anyhow::Result<Vec<RingBuf<MapData>>> {
        synack_rings(&mut self.ebpf)
    }

    pub fn take_synack_counters(&mut self) -> anyhow::Result<KernelCounters> {
        let map = self
            .ebpf
            .take_map("SYNACK_COUNTERS")
            .context("the eBPF object has no SYNACK_COUNTERS map")?;
        Ok(KernelCounters(PerCpuArray::try_from(map)?))
    }

    pub fn take_anomaly_events(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("ANOMALY_EVENTS")
            .context("the eBPF object has no ANOMALY_EVENTS map")?;
        Ok(RingBuf::try_from(map)?)
    }

    pub fn take_handshake_counters(&mut self) -> anyhow::Result<HandshakeCounters> {
        let map = self
            .ebpf
            .take_map("HANDSHAKE_COUNTERS")
            .context("the eBPF object has no HANDSHAKE_COUNTERS map")?;
        Ok(HandshakeCounters(PerCpuArray::try_from(map)?))
    }

    /// The per-service counts of guesses only the kernel saw (see [`KernelGuesses`]).
    pub fn take_kernel_guesses(&mut self) -> anyhow::Result<KernelGuesses> {
        let map = self.take_map("KERNEL_GUESSES")?;
        Ok(KernelGuesses::new(PerCpuHashMap::try_from(map)?))
    }

    /// Turns on the handshake tracker's stateful checks: only sound when both directions are
    /// attached, so that it sees SYNs coming in and SYN-ACKs going out. Open handshakes are
    /// protected from eviction for as long as this namespace's kernel keeps a request.
    pub fn enable_handshake_tracking(&mut self) -> anyhow::Result<()> {
        let map = self
            .ebpf
            .map_mut("HANDSHAKE_CONFIG")
            .context("the eBPF object has no HANDSHAKE_CONFIG map")?;
        let mut config = Array::<_, u32>::try_from(map)?;
        let lifetime = request_lifetime_seconds(synack_retries());
        config.set(1, &protection_ticks(lifetime), 0)?;
        // Non-zero: on; and the seed of the state table's slot hash, secret so that a remote
        // host cannot pick 4-tuples that take a given handshake's slot.
        let seed = rand::random::<u32>() | 1;
        config.set(0, &seed, 0)?;
        Ok(())
    }

    /// Loads the BTF tracepoint program `name` and attaches it to the kernel tracepoint of
    /// the same name, whose arguments `btf` (the kernel's) describes; returns how long
    /// loading (the verifier) took. The link lives as long as the loaded object.
    pub fn attach_tracepoint(&mut self, name: &str, btf: &Btf) -> anyhow::Result<Duration> {
        let program: &mut BtfTracePoint = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("the eBPF object has no program {name}"))?
            .try_into()?;
        let started = Instant::now();
        program
            .load(name, btf)
            .with_context(|| format!("the verifier rejected {name}"))?;
        let verified = started.elapsed();
        program
            .attach()
            .with_context(|| format!("attaching to tracepoint {name} failed"))?;
        self.tracepoints.insert(name.to_owned());
        Ok(verified)
    }

    pub fn is_tracepoint_attached(&self, name: &str) -> bool {
        self.tracepoints.contains(name)
    }

    /// The per-port SYN, SYN-ACK and handshake counters: the ports' slot numbers and the
    /// slots' counters.
    pub fn take_listener_counts(
        &mut self,
    ) -> anyhow::Result<(Array<MapData, u64>, PerCpuArray<MapData, PortCounts>)> {
        let mut take = |name: &str| {
            self.ebpf
                .take_map(name)
                .with_context(|| format!("the eBPF object has no {name} map"))
        };
        let slots = Array::try_from(take("LISTENER_PORT_SLOTS")?)?;
        let counts = PerCpuArray::try_from(take("LISTENER_SLOT_COUNTS")?)?;
        Ok((slots, counts))
    }

    pub fn take_tcp_events(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("TCP_EVENTS")
            .context("the eBPF object has no TCP_EVENTS map")?;
        Ok(RingBuf::try_from(map)?)
    }

    pub fn take_tcp_event_counters(&mut self) -> anyhow::Result<TcpEventCounters> {
        let map = self
            .ebpf
            .take_map("TCP_EVENT_COUNTERS")
            .context("the eBPF object has no TCP_EVENT_COUNTERS map")?;
        Ok(TcpEventCounters(PerCpuArray::try_from(map)?))
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// The SYN-ACK origin check's seed for the classifiers: off (0) unless ingress SYN-ACKs are
/// sampled; then random, so that a remote host cannot aim SYNs at a given SYN record.
pub fn synack_origin_seed(samples_ingress: bool) -> u32 {
    if samples_ingress {
        rand::random::<u32>() | 1
    } else {
        0
    }
}

/// tcx arrived in Linux 6.6.
fn kernel_has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|version| version >= KernelVersion::new(6, 6, 0))
}

/// The per-CPU counters of the SYN-ACK sampler, summed over CPUs on read.
pub struct KernelCounters(PerCpuArray<MapData, u64>);

impl KernelCounters {
    pub fn read(&self, counter: Counter) -> u64 {
        per_cpu_total(&self.0, counter as u32)
    }
}

/// One slot of a per-CPU counter array, summed over the CPUs (0 if unreadable).
pub fn per_cpu_total(counters: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
    counters
        .get(&index, 0)
        .map(|values| values.iter().sum())
        .unwrap_or(0)
}

/// Creates this host's SYN-ACK ring buffers, one per possible CPU (see
/// `seqwatch_common::synack::RING_BYTES_TOTAL`), and puts them in the object's `SYNACK_RINGS`
/// where the classifiers find them: before anything is attached, so that no SYN-ACK finds its
/// CPU's slot empty. Returns them in CPU order, for reading.
pub fn synack_rings(ebpf: &mut Ebpf) -> anyhow::Result<Vec<RingBuf<MapData>>> {
    let map = ebpf
        .take_map("SYNACK_RINGS")
        .context("the eBPF object has no SYNACK_RINGS map")?;
    let mut slots = ArrayOfMaps::<MapData, MapData>::try_from(map)?;
    let cpus = aya::util::nr_cpus()
        .map_err(|(path, err)| anyhow!("reading {path}: {err}"))?
        .get();
    let bytes = synack::ring_bytes_per_cpu(cpus);
    (0..cpus)
        .map(|cpu| {
            let params = aya_obj::Map::new_from_params(
                aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32,
                0,
                0,
                bytes,
                0,
            );
            let ring = MapData::create(params, "synack_ring", None).with_context(|| {
                format!("creating the SYN-ACK ring buffer of CPU {cpu} ({bytes} bytes)")
            })?;
            slots.set(cpu, &ring, 0)?;
            Ok(RingBuf::try_from(Map::RingBuf(ring))?)
        })
        .collect()
}

/// Adds every record waiting in `rings` to `records`, and puts them oldest first: each ring is
/// in its own CPU's order, runs which the stable sort finds and merges.
pub fn take_synack_records<'a>(
    rings: impl IntoIterator<Item = &'a mut RingBuf<MapData>>,
    records: &mut Vec<SynAckRecord>,
) {
    for ring in rings {
        while let Some(item) = ring.next() {
            match decode_record(&item) {
                Some(record) => records.push(record),
                None => log::warn!("short ring-buffer record of {} bytes ignored", item.len()),
            }
        }
    }
    records.sort_by_key(|record| record.ts_ns);
}

/// Decodes one ring-buffer item; `None` for a short item (never expected from our program).
fn decode_record(bytes: &[u8]) -> Option<SynAckRecord> {
    if bytes.len() < size_of::<SynAckRecord>() {
        return None;
    }
    // SAFETY: SynAckRecord is plain old data and the length was checked.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<SynAckRecord>()) })
}

/// This daemon's netlink filters on `ifindex`: (hook, handle).
fn filters_on(
    attachments: &BTreeMap<(u32, Direction), Attachment>,
    ifindex: u32,
) -> Vec<(Direction, u32)> {
    attachments
        .iter()
        .filter(|((index, _), _)| *index == ifindex)
        .filter_map(|(&(_, direction), attachment)| Some((direction, attachment.filter?)))
        .collect()
}

/// Every classifier of the object: a tc filter of one of these programs may be seqwatch's.
fn classifier_names(ebpf: &Ebpf) -> Vec<String> {
    ebpf.programs()
        .filter(|(_, program)| matches!(program, Program::SchedClassifier(_)))
        .map(|(name, _)| name.to_owned())
        .collect()
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut SchedClassifier> {
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("the eBPF object has no program {name}"))?;
    Ok(program.try_into()?)
}

/// Routes the kernel side's aya-log records (rare diagnostics, never per packet) to `log`.
fn start_kernel_log(ebpf: &mut Ebpf) {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(err) => {
            log::warn!("kernel diagnostics unavailable: {err}");
            return;
        }
    };
    // SAFETY: the AsyncFd owns the logger, so the fd outlives its registration.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let Ok(mut logger) = registered else {
        log::warn!("kernel diagnostics unavailable: cannot poll the log buffer");
        return;
    };
    tokio::spawn(async move {
        while let Ok(mut guard) = logger.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

/// This namespace's `net.ipv4.tcp_synack_retries`, or the kernel's default (5) if unreadable.
fn synack_retries() -> u8 {
    const PATH: &str = "/proc/sys/net/ipv4/tcp_synack_retries";
    match std::fs::read_to_string(PATH).map(|text| text.trim().parse::<u8>()) {
        Ok(Ok(retries)) => retries,
        other => {
            log::warn!(
                "reading {PATH} ({other:?}): open handshakes are protected as for 5 retries"
            );
            5
        }
    }
}
