//! Loads the kernel object (its read-only globals set by the detectors first) and attaches
//! its programs: the classifiers to interfaces (tcx, or netlink/clsact where tcx is missing),
//! the BTF tracepoints to the kernel. It keeps track of everything it attached so that it
//! can take all of it back, and hands each map to the detector that reads it.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{ArrayOfMaps, HashMap, Map, MapData, MapError, RingBuf},
    programs::{
        BtfTracePoint, Program, SchedClassifier, TcAttach, TcAttachType,
        tc::{NlOptions, SchedClassifierLinkId},
    },
    util::KernelVersion,
};
use prometheus::{IntCounterVec, IntGaugeVec};
use seqwatch_common::{
    Direction,
    synack_origin::{JUDGED_INTERFACES, JUDGES_SEGMENTS, JUDGES_SYNACKS},
};

use super::clsact::Ownership;
use crate::export::metrics::Registry;

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

/// The ingress classifier of another namespace's veth (`--netns all`): it samples the
/// SYN-ACKs coming in that answer a recorded SYN, and nothing else.
pub const SYNACK_FROM_NETNS: &str = "synack_from_netns";

/// The map of the interfaces whose ingress classifier judges what comes in
/// (`seqwatch_common::synack_origin::JUDGED_INTERFACES`).
const JUDGED_AT_INGRESS: &str = "JUDGED_AT_INGRESS";

/// What `program`, attached to an interface's ingress, judges of what comes in by it.
fn judges(program: &str) -> u32 {
    if program == synack_program(Direction::Ingress) {
        JUDGES_SYNACKS | JUDGES_SEGMENTS
    } else if program == SYNACK_FROM_NETNS {
        JUDGES_SYNACKS
    } else {
        0
    }
}

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

/// Values of the object's read-only globals, set by the detectors before it is loaded.
#[derive(Default)]
pub struct Globals(Vec<(&'static str, Vec<u8>)>);

impl Globals {
    /// Sets the global `name` (which the object must have) to `value`.
    pub fn set<T: aya::Pod>(&mut self, name: &'static str, value: &T) {
        // SAFETY: T is plain old data: its bytes are all initialized.
        let bytes = unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(value).cast::<u8>(), size_of::<T>())
        };
        self.0.push((name, bytes.to_vec()));
    }
}

/// `seqwatch_program_attached` and `seqwatch_program_reattached_total`: each program's
/// attachments, by interface and direction (empty for a tracepoint).
#[derive(Clone)]
pub struct AttachMetrics {
    attached: IntGaugeVec,
    reattached: IntCounterVec,
}

impl AttachMetrics {
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let labels = &["program", "interface", "direction"];
        Ok(AttachMetrics {
            attached: registry.gauges(
                "seqwatch_program_attached",
                "1 while the program is attached to the interface in that direction, 0 if \
                 attaching failed.",
                labels,
            )?,
            reattached: registry.counters(
                "seqwatch_program_reattached_total",
                "Times the program was attached again after it was taken away from outside: its \
                 tcx link detached, or its tc filter or clsact qdisc deleted.",
                labels,
            )?,
        })
    }

    pub fn set(&self, labels: &[&str; 3], attached: bool) {
        self.attached
            .with_label_values(labels)
            .set(i64::from(attached));
    }

    pub fn reattached(&self, labels: &[&str; 3]) {
        self.reattached.with_label_values(labels).inc();
    }

    /// Removes the series of an attachment whose interface is gone.
    pub fn remove(&self, labels: &[&str; 3]) {
        let _ = self.attached.remove_label_values(labels);
        let _ = self.reattached.remove_label_values(labels);
    }

    /// A tracepoint has no interface or direction: those labels stay empty.
    pub fn set_tracepoint(&self, program: &str, attached: bool) {
        self.set(&[program, "", ""], attached);
    }
}

/// The loaded object and every attachment made from it.
pub struct LoadedObject {
    ebpf: Ebpf,
    /// Each interface whose ingress classifier judges what comes in, and what it judges:
    /// egress leaves what was judged alone.
    judged_at_ingress: HashMap<MapData, u32, u32>,
    metrics: AttachMetrics,
    mode: AttachMode,
    attachments: BTreeMap<(u32, Direction), Attachment>,
    /// Tracepoint programs attached.
    tracepoints: BTreeSet<String>,
    /// Netlink mode: this daemon's owner number and what it knows of the clsact qdiscs.
    ownership: Option<Ownership>,
    /// Each classifier's kernel program id: tcx mode finds its own among an interface's.
    program_ids: BTreeMap<&'static str, u32>,
}

impl LoadedObject {
    /// Loads the embedded object with `globals` in its read-only data, and verifies the
    /// classifiers (the tracepoints are verified as they attach).
    pub fn load(
        mode: AttachMode,
        globals: &Globals,
        metrics: AttachMetrics,
    ) -> anyhow::Result<Self> {
        let mut loader = EbpfLoader::new();
        for (name, bytes) in &globals.0 {
            loader.override_global(name, bytes.as_slice(), true);
        }
        let mut ebpf = loader.load(object()?).context(
            "loading the eBPF object failed (needs root or CAP_BPF+CAP_NET_ADMIN+CAP_PERFMON, \
             and a kernel with BTF)",
        )?;
        start_kernel_log(&mut ebpf);
        let mut program_ids = BTreeMap::new();
        for program in Direction::ALL
            .map(synack_program)
            .into_iter()
            .chain([SYN_RECORDER, SYNACK_FROM_NETNS])
        {
            let loaded = classifier(&mut ebpf, program)?;
            loaded
                .load()
                .with_context(|| format!("the verifier rejected {program}"))?;
            let id = loaded.info().context("the loaded program's id")?.id();
            program_ids.insert(program, id);
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
        let judged_at_ingress = ebpf
            .take_map(JUDGED_AT_INGRESS)
            .with_context(|| format!("the object has no {JUDGED_AT_INGRESS} map"))?
            .try_into()?;
        Ok(LoadedObject {
            ebpf,
            judged_at_ingress,
            metrics,
            mode,
            attachments: BTreeMap::new(),
            tracepoints: BTreeSet::new(),
            ownership,
            program_ids,
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
        let attach_type = attach_type(direction);
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
                self.note_judged(ifindex, direction, program)
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

    /// Tells egress what an ingress classifier just attached judges. Once the map is full
    /// (`JUDGED_INTERFACES`) the classifier is taken back: unmarked, what it sampled would be
    /// sampled again as it leaves.
    fn note_judged(
        &mut self,
        ifindex: u32,
        direction: Direction,
        program: &str,
    ) -> anyhow::Result<()> {
        let judged = judges(program);
        if direction != Direction::Ingress || judged == 0 {
            return Ok(());
        }
        if let Err(err) = self.judged_at_ingress.insert(&ifindex, &judged, 0) {
            self.detach(ifindex, direction);
            return Err(err).with_context(|| {
                format!("at most {JUDGED_INTERFACES} interfaces have an ingress sampler")
            });
        }
        Ok(())
    }

    /// Takes one attachment back. On a vanished interface the kernel has already done so.
    /// What it judged is forgotten first, so that egress never skips what nothing judged.
    pub fn detach(&mut self, ifindex: u32, direction: Direction) {
        let Some(attachment) = self.attachments.remove(&(ifindex, direction)) else {
            return;
        };
        self.forget_judged(ifindex, direction);
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

    /// Checks that each classifier this daemon attached is still in place, forgets those that
    /// are not so that they can be attached again, and returns them. Anything with
    /// CAP_NET_ADMIN can take one away: a tcx link detached (BPF_LINK_DETACH, as `bpftool link
    /// detach` does), or in netlink mode a filter or the clsact qdisc deleted (`tc`). Stale
    /// filters of dead daemons seen on the way are removed.
    pub fn forget_lost_attachments(&mut self) -> Vec<(u32, Direction)> {
        let lost = match self.ownership.as_mut() {
            Some(ownership) => lost_filters(&self.attachments, ownership),
            None => lost_tcx_links(&self.attachments, &self.program_ids),
        };
        for &(ifindex, direction) in &lost {
            let Some(attachment) = self.attachments.remove(&(ifindex, direction)) else {
                continue;
            };
            self.forget_judged(ifindex, direction);
            if let Ok(program) = classifier(&mut self.ebpf, attachment.program)
                && let Ok(link) = program.take_link(attachment.link)
                && attachment.filter.is_some()
            {
                // Dropping the link would delete whatever filter stands in its place now; it
                // holds no file descriptor, only the filter's address. (A detached tcx link
                // is dropped: that closes its descriptor.)
                std::mem::forget(link);
            }
        }
        lost
    }

    fn forget_judged(&mut self, ifindex: u32, direction: Direction) {
        if direction == Direction::Ingress {
            // Absent unless its classifier judges: nothing to undo then.
            let _ = self.judged_at_ingress.remove(&ifindex);
        }
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

    /// Takes a map out of the loaded object, by name, as the type its reader needs.
    pub fn take<M: TryFrom<Map, Error = MapError>>(&mut self, name: &str) -> anyhow::Result<M> {
        let map = self
            .ebpf
            .take_map(name)
            .with_context(|| format!("the eBPF object has no {name} map"))?;
        M::try_from(map).with_context(|| format!("the {name} map"))
    }

    /// A map left in the object, to write its configuration.
    pub fn map_mut<'a, M: TryFrom<&'a mut Map, Error = MapError>>(
        &'a mut self,
        name: &str,
    ) -> anyhow::Result<M> {
        let map = self
            .ebpf
            .map_mut(name)
            .with_context(|| format!("the eBPF object has no {name} map"))?;
        M::try_from(map).with_context(|| format!("the {name} map"))
    }

    pub fn attach_metrics(&self) -> &AttachMetrics {
        &self.metrics
    }

    /// Loads the BTF tracepoint program `name` and attaches it to the kernel tracepoint of
    /// the same name, whose arguments `btf` (the kernel's) describes; one this kernel does not
    /// accept is logged and left off. The link lives as long as the loaded object.
    pub fn attach_tracepoint(&mut self, name: &str, btf: &Btf) -> bool {
        let attached = match self.load_and_attach_tracepoint(name, btf) {
            Ok(verified) => {
                log::info!("attached {name} (BTF tracepoint; loaded and verified in {verified:?})");
                true
            }
            Err(err) => {
                log::warn!("{name} off: {err:#}");
                false
            }
        };
        self.metrics.set_tracepoint(name, attached);
        attached
    }

    /// Returns how long loading (the verifier) took.
    fn load_and_attach_tracepoint(&mut self, name: &str, btf: &Btf) -> anyhow::Result<Duration> {
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
}

impl Drop for LoadedObject {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// tcx arrived in Linux 6.6.
fn kernel_has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|version| version >= KernelVersion::new(6, 6, 0))
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

/// Netlink mode: the attachments whose filter is gone from its interface.
fn lost_filters(
    attachments: &BTreeMap<(u32, Direction), Attachment>,
    ownership: &mut Ownership,
) -> Vec<(u32, Direction)> {
    let mut lost = Vec::new();
    for (&(ifindex, direction), attachment) in attachments {
        let Some(handle) = attachment.filter else {
            continue;
        };
        let mine = filters_on(attachments, ifindex);
        let ours = (attachment.program, handle);
        match ownership.is_present(ifindex, direction, ours, &mine) {
            Ok(true) => {}
            Ok(false) => lost.push((ifindex, direction)),
            Err(err) => log::debug!("checking the filters of ifindex {ifindex}: {err:#}"),
        }
    }
    lost
}

/// Tcx mode: the attachments whose program is no longer among its hook's (BPF_PROG_QUERY).
fn lost_tcx_links(
    attachments: &BTreeMap<(u32, Direction), Attachment>,
    program_ids: &BTreeMap<&'static str, u32>,
) -> Vec<(u32, Direction)> {
    let mut lost = Vec::new();
    for (&(ifindex, direction), attachment) in attachments {
        let ours = program_ids.get(attachment.program);
        match SchedClassifier::query_tcx(ifindex, attach_type(direction)) {
            Ok((_, programs)) if programs.iter().any(|p| Some(&p.id()) == ours) => {}
            Ok(_) => lost.push((ifindex, direction)),
            Err(err) => log::debug!("querying the tcx programs of ifindex {ifindex}: {err}"),
        }
    }
    lost
}

fn attach_type(direction: Direction) -> TcAttachType {
    match direction {
        Direction::Egress => TcAttachType::Egress,
        Direction::Ingress => TcAttachType::Ingress,
    }
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

/// Creates one ring buffer of `bytes` (given the number of possible CPUs) per possible CPU,
/// named `ring_name`, and puts it in the object's array of maps `slots`, where the programs find
/// their CPU's: before anything is attached, so that no record finds its CPU's slot empty. Returns
/// them in CPU order, for reading.
pub fn per_cpu_rings(
    ebpf: &mut Ebpf,
    slots: &str,
    ring_name: &str,
    bytes: impl Fn(u32) -> u32,
) -> anyhow::Result<Vec<RingBuf<MapData>>> {
    let map = ebpf
        .take_map(slots)
        .with_context(|| format!("the eBPF object has no {slots} map"))?;
    let mut slots = ArrayOfMaps::<MapData, MapData>::try_from(map)?;
    let cpus = aya::util::nr_cpus()
        .map_err(|(path, err)| anyhow!("reading {path}: {err}"))?
        .get();
    let bytes = bytes(cpus);
    (0..cpus)
        .map(|cpu| {
            let params = aya_obj::Map::new_from_params(
                aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32,
                0,
                0,
                bytes,
                0,
            );
            let ring = MapData::create(params, ring_name, None).with_context(|| {
                format!("creating the {ring_name} ring buffer of CPU {cpu} ({bytes} bytes)")
            })?;
            slots.set(cpu, &ring, 0)?;
            Ok(RingBuf::try_from(Map::RingBuf(ring))?)
        })
        .collect()
}
