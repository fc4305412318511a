//! Per-packet cost of the classifiers (SYN-ACK sampler, handshake checks, TLS record check with
//! its default ports, per-port counters for the server's port) against an empty classifier,
//! measured by the kernel itself (BPF_PROG_TEST_RUN), runs alternating: on egress as deployed
//! by default (stateless handshake checks, SYN-ACK origin check off), in each direction with
//! `--direction ingress` (origin check on: SYNs recorded on egress, by the SYN recorder alone)
//! and with `--direction both` (origin check and stateful checks on). The frames are a
//! server's view: what it sends, and a client's SYN; as ingress frames, the SYN-ACKs are a
//! remote server's answers, one to a SYN the SYN row recorded (its ack is that SYN's ISN + 1)
//! and one to none. Each packet runs 2 000 times in a row, so the SYN's row is a
//! retransmission after the first run, the matched SYN-ACK's a retransmitted answer; the last
//! rows time SYNs of new connections, and the SYN-ACKs and third packets of whole handshakes
//! (each after its handshake's earlier segments), 2 000 distinct ones run once each (each run
//! then starts with cold caches, the empty program's too). BPF_PROG_TEST_RUN gives a SYN-ACK
//! no kernel timestamp, so there a protected handshake's SYN-ACK reads the clock, which a real
//! one does not. Needs root. Run by `./x bench`. With
//! `SEQWATCH_BENCH_REFERENCE=FILE` (another build's eBPF object, e.g. the one before a change)
//! its classifiers run in the same alternation, as the `ref ns` column.

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, RingBuf},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use etherparse::{PacketBuilder, PacketBuilderStep, TcpHeader, TcpOptionElement, VlanId};
use seqwatch::kernel::SYN_RECORDER;
use seqwatch_common::{handshake, listener_counts};

/// Runs per measurement: below a CPU's ring buffer capacity (at least 2 300 records), so every
/// SYN-ACK is recorded.
const REPEAT: u32 = 2_000;
const TRIALS: usize = 15;
/// Distinct SYNs per trial for the new-handshake row.
const NEW_SYNS: u16 = 2_000;

/// What is measured: a label, the classifier, whether the SYN-ACK origin check is on (it is
/// with ingress sampling: the object loaded with a seed) and whether the stateful handshake
/// checks are (with `--direction both`).
const SETUPS: [(&str, &str, bool, u32); 5] = [
    ("egress (default)", "synack_egress", false, 0),
    ("ingress: egress", SYN_RECORDER, true, 0),
    ("ingress: ingress", "synack_ingress", true, 0),
    ("both: egress", "synack_egress", true, 1),
    ("both: ingress", "synack_ingress", true, 1),
];

/// The origin check's seed when on (the daemon's is random).
const SEED: u32 = 0x5eed;

/// An object loaded twice: with the SYN-ACK origin check off and on.
struct Loaded {
    off: Classifiers,
    on: Classifiers,
}

impl Loaded {
    fn load(object: &[u8]) -> anyhow::Result<Loaded> {
        Ok(Loaded {
            off: load(object, 0)?,
            on: load(object, SEED)?,
        })
    }

    fn get(&mut self, origin_check: bool) -> &mut Classifiers {
        if origin_check {
            &mut self.on
        } else {
            &mut self.off
        }
    }
}

/// A loaded object and the ring buffers its classifiers fill.
struct Classifiers {
    ebpf: Ebpf,
    rings: Vec<RingBuf<MapData>>,
    anomalies: RingBuf<MapData>,
}

impl Classifiers {
    fn empty_rings(&mut self) {
        for ring in self.rings.iter_mut().chain([&mut self.anomalies]) {
            while ring.next().is_some() {}
        }
    }
}

fn main() -> anyhow::Result<()> {
    let mut ours = Loaded::load(seqwatch::kernel::object()?)?;
    let reference_object = std::env::var_os("SEQWATCH_BENCH_REFERENCE")
        .map(std::fs::read)
        .transpose()?;
    let mut reference = reference_object.as_deref().map(Loaded::load).transpose()?;
    println!(
        "classifier cost per packet (BPF_PROG_TEST_RUN, {REPEAT} runs x {TRIALS} alternating trials, median)"
    );
    println!(
        "{:<44} {:<17} {:>9} {:>9} {:>9} {:>9}",
        "packet", "setup", "empty ns", "ref ns", "ours ns", "delta ns"
    );
    for (label, frame) in frames()? {
        for (setup, program, origin_check, stateful) in SETUPS {
            let ours = ours.get(origin_check);
            set_stateful(&mut ours.ebpf, stateful)?;
            // A reference object from before the SYN recorder has no such program.
            let mut reference = reference
                .as_mut()
                .map(|reference| reference.get(origin_check))
                .filter(|reference| reference.ebpf.program(program).is_some());
            if let Some(reference) = reference.as_mut() {
                set_stateful(&mut reference.ebpf, stateful)?;
            }
            let (mut empty, mut theirs, mut times) = (Vec::new(), Vec::new(), Vec::new());
            for trial in 0..TRIALS {
                empty.push(run(&mut ours.ebpf, "baseline", &frame)?);
                for ours_now in order(trial) {
                    if ours_now {
                        times.push(run(&mut ours.ebpf, program, &frame)?);
                        ours.empty_rings();
                    } else if let Some(reference) = reference.as_mut() {
                        theirs.push(run(&mut reference.ebpf, program, &frame)?);
                        reference.empty_rings();
                    }
                }
            }
            print_row(label, setup, &mut empty, &mut theirs, &mut times);
        }
    }
    // The SYN above is the same packet every run: after the first, a retransmission. New
    // ones: a client's arriving (a state insert), and this host's leaving (a SYN record).
    let new_syn_setups = [
        (
            "IPv4 SYNs of new handshakes (each run once)",
            "both: ingress",
            "synack_ingress",
        ),
        (
            "IPv4 SYNs of new connections (each run once)",
            "both: egress",
            "synack_egress",
        ),
    ];
    for (row, (label, setup, program)) in new_syn_setups.into_iter().enumerate() {
        let ours = ours.get(true);
        set_stateful(&mut ours.ebpf, 1)?;
        let mut reference = reference.as_mut().map(|reference| reference.get(true));
        if let Some(reference) = reference.as_mut() {
            set_stateful(&mut reference.ebpf, 1)?;
        }
        let (mut empty, mut theirs, mut times) = (Vec::new(), Vec::new(), Vec::new());
        for trial in 0..TRIALS {
            let syns = new_syns(row * TRIALS + trial)?;
            empty.push(run_each(&mut ours.ebpf, "baseline", &syns)?);
            for ours_now in order(trial) {
                if ours_now {
                    times.push(run_each(&mut ours.ebpf, program, &syns)?);
                } else if let Some(reference) = reference.as_mut() {
                    theirs.push(run_each(&mut reference.ebpf, program, &syns)?);
                }
            }
        }
        print_row(label, setup, &mut empty, &mut theirs, &mut times);
    }
    whole_handshakes(&mut ours, reference.as_mut())
}

/// Whole handshakes: each SYN-ACK after its SYN, each third ACK after its SYN-ACK.
fn whole_handshakes(ours: &mut Loaded, mut reference: Option<&mut Loaded>) -> anyhow::Result<()> {
    let ours = ours.get(true);
    set_stateful(&mut ours.ebpf, 1)?;
    let mut reference = reference.as_mut().map(|reference| reference.get(true));
    if let Some(reference) = reference.as_mut() {
        set_stateful(&mut reference.ebpf, 1)?;
    }
    let [mut empty, mut theirs, mut times]: [[Vec<u128>; 2]; 3] = Default::default();
    let classifiers = ["synack_ingress", "synack_egress"];
    for trial in 0..TRIALS {
        let handshakes = handshakes(2 * TRIALS + trial)?;
        push_pair(
            &mut empty,
            time_handshakes(&mut ours.ebpf, ["baseline"; 2], &handshakes)?,
        );
        for ours_now in order(trial) {
            if ours_now {
                push_pair(
                    &mut times,
                    time_handshakes(&mut ours.ebpf, classifiers, &handshakes)?,
                );
                ours.empty_rings();
            } else if let Some(reference) = reference.as_mut() {
                push_pair(
                    &mut theirs,
                    time_handshakes(&mut reference.ebpf, classifiers, &handshakes)?,
                );
                reference.empty_rings();
            }
        }
    }
    let rows = [
        (
            "IPv4 SYN-ACKs of new handshakes (each once)",
            "both: egress",
        ),
        ("IPv4 third ACKs (each run once)", "both: ingress"),
    ];
    for (i, (label, setup)) in rows.into_iter().enumerate() {
        print_row(label, setup, &mut empty[i], &mut theirs[i], &mut times[i]);
    }
    Ok(())
}

fn push_pair(columns: &mut [Vec<u128>; 2], (synack, ack): (u128, u128)) {
    columns[0].push(synack);
    columns[1].push(ack);
}

/// Runs each handshake's SYN through `ingress`, then times its SYN-ACK through `egress` and
/// its third packet through `ingress`; average ns per SYN-ACK and per third packet.
fn time_handshakes(
    ebpf: &mut Ebpf,
    [ingress, egress]: [&str; 2],
    handshakes: &[[Vec<u8>; 3]],
) -> anyhow::Result<(u128, u128)> {
    let (mut synacks, mut acks) = (0, 0);
    for [syn, synack, ack] in handshakes {
        run_each(ebpf, ingress, std::slice::from_ref(syn))?;
        synacks += run_each(ebpf, egress, std::slice::from_ref(synack))?;
        acks += run_each(ebpf, ingress, std::slice::from_ref(ack))?;
    }
    let count = handshakes.len() as u128;
    Ok((synacks / count, acks / count))
}

/// Whether ours runs first (then the reference) in a trial: each side goes first in every
/// other one, since the second finds the caches as the first left them.
fn order(trial: usize) -> [bool; 2] {
    let ours_first = trial.is_multiple_of(2);
    [ours_first, !ours_first]
}

fn print_row(label: &str, setup: &str, empty: &mut [u128], theirs: &mut [u128], ours: &mut [u128]) {
    let (empty, ours) = (median(empty), median(ours));
    let theirs = if theirs.is_empty() {
        "-".to_owned()
    } else {
        median(theirs).to_string()
    };
    println!(
        "{label:<44} {setup:<17} {empty:>9} {theirs:>9} {ours:>9} {:>9}",
        ours as i64 - empty as i64
    );
}

/// Loads an object's classifiers with the SYN-ACK origin check's seed (0: off; an object
/// from before the check has none), and gives them their SYN-ACK rings as the daemon does (a
/// reference object from before the per-CPU rings has a single `SYNACK_RECORDS`).
fn load(object: &[u8], origin_seed: u32) -> anyhow::Result<Classifiers> {
    let mut ebpf = EbpfLoader::new()
        .override_global("SYNACK_ORIGIN_SEED", &origin_seed, false)
        .load(object)?;
    for name in ["baseline", "synack_egress", "synack_ingress", SYN_RECORDER] {
        if ebpf.program(name).is_some() {
            classifier(&mut ebpf, name)?.load()?;
        }
    }
    // The TLS check with its default ports, as the daemon runs it (a reference object from
    // before the check has no such maps).
    if ebpf.map("TLS_CONFIG").is_some() {
        seqwatch::detectors::tls::configure(
            &mut ebpf,
            &seqwatch::detectors::tls::TlsOptions::default(),
        )?;
    }
    // The frames' server port is a counted listening port: the per-port counters' full cost
    // (a reference object from before them has no such map).
    if let Some(slots) = ebpf.map_mut("LISTENER_PORT_SLOTS") {
        let word = listener_counts::with_slot(0, SERVER_PORT, 1);
        Array::<_, u64>::try_from(slots)?.set(listener_counts::slot_word(SERVER_PORT), &word, 0)?;
    }
    let rings = match ebpf.take_map("SYNACK_RECORDS") {
        Some(single) => vec![RingBuf::try_from(single)?],
        None => seqwatch::detectors::isn::sample_rings(&mut ebpf)?,
    };
    let anomalies = RingBuf::try_from(ebpf.take_map("ANOMALY_EVENTS").expect("map"))?;
    Ok(Classifiers {
        ebpf,
        rings,
        anomalies,
    })
}

/// Turns the handshake tracker's stateful checks on or off, as the daemon does for
/// `--direction both` or one direction, with the protection of open handshakes the daemon
/// gives them by default (an object from before the protection has no room for it).
fn set_stateful(ebpf: &mut Ebpf, on: u32) -> anyhow::Result<()> {
    let mut config = Array::<_, u32>::try_from(ebpf.map_mut("HANDSHAKE_CONFIG").expect("map"))?;
    config.set(0, &on, 0)?;
    if config.len() > 1 {
        let ticks = handshake::protection_ticks(handshake::request_lifetime_seconds(5));
        config.set(1, &(ticks * on), 0)?;
    }
    Ok(())
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut SchedClassifier> {
    Ok(ebpf.program_mut(name).expect("program").try_into()?)
}

/// Average ns per run, as the kernel measured it.
fn run(ebpf: &mut Ebpf, name: &str, frame: &[u8]) -> anyhow::Result<u128> {
    let result = classifier(ebpf, name)?.test_run(TestRunOptions {
        data_in: Some(frame),
        repeat: REPEAT,
        ..Default::default()
    })?;
    Ok(result.duration.as_nanos())
}

/// Average ns per run of frames each run once (the kernel's time of each single run: its
/// clock reads are in every one, the empty program's too).
fn run_each(ebpf: &mut Ebpf, name: &str, frames: &[Vec<u8>]) -> anyhow::Result<u128> {
    let program = classifier(ebpf, name)?;
    let mut total = 0;
    for frame in frames {
        let result = program.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..Default::default()
        })?;
        total += result.duration.as_nanos();
    }
    Ok(total / frames.len() as u128)
}

fn median(values: &mut [u128]) -> u128 {
    values.sort_unstable();
    values[values.len() / 2]
}

const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const SERVER_PORT: u16 = 8080;
const SERVER_V4: [u8; 4] = [10, 0, 0, 1];
const CLIENT_V4: [u8; 4] = [10, 0, 0, 2];
const SERVER_V6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const CLIENT_V6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// SYNs of new handshakes, one per client port, from a client address of the trial's own
/// (so that no trial's SYN finds another's state or record).
fn new_syns(trial: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    let client = [10, 1, u8::try_from(trial)?, 2];
    (0..NEW_SYNS)
        .map(|i| {
            let builder = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC)
                .ipv4(client, SERVER_V4, 64)
                .tcp(20_000 + i, SERVER_PORT, 7, 65535)
                .syn();
            let mut frame = Vec::with_capacity(builder.size(0));
            builder.write(&mut frame, &[])?;
            Ok(frame)
        })
        .collect()
}

/// Whole handshakes (SYN, SYN-ACK, right third ACK), one per client port, from a client
/// address of the round's own (no round's SYN finds another's state).
fn handshakes(round: usize) -> anyhow::Result<Vec<[Vec<u8>; 3]>> {
    let client = [10, 1, u8::try_from(round)?, 2];
    let to_server = || PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC).ipv4(client, SERVER_V4, 64);
    let to_client = || PacketBuilder::ethernet2(SERVER_MAC, CLIENT_MAC).ipv4(SERVER_V4, client, 64);
    let write = |builder: PacketBuilderStep<TcpHeader>| -> anyhow::Result<Vec<u8>> {
        let mut frame = Vec::with_capacity(builder.size(0));
        builder.write(&mut frame, &[])?;
        Ok(frame)
    };
    (0..NEW_SYNS)
        .map(|i| {
            let port = 20_000 + i;
            Ok([
                write(to_server().tcp(port, SERVER_PORT, 7, 65535).syn())?,
                write(to_client().tcp(SERVER_PORT, port, 1000, 65535).syn().ack(8))?,
                write(to_server().tcp(port, SERVER_PORT, 8, 65535).ack(1001))?,
            ])
        })
        .collect()
}

/// What a busy server sends: data segments (with timestamps) and SYN-ACKs.
fn frames() -> anyhow::Result<Vec<(&'static str, Vec<u8>)>> {
    let payload = [0x5a; 100];
    let timestamps = [
        TcpOptionElement::Noop,
        TcpOptionElement::Noop,
        TcpOptionElement::Timestamp(1, 2),
    ];
    let synack_options = [
        TcpOptionElement::MaximumSegmentSize(1460),
        TcpOptionElement::SelectiveAcknowledgementPermitted,
        TcpOptionElement::Timestamp(1, 2),
        TcpOptionElement::Noop,
        TcpOptionElement::WindowScale(7),
    ];
    let v4 = || PacketBuilder::ethernet2(SERVER_MAC, CLIENT_MAC).ipv4(SERVER_V4, CLIENT_V4, 64);
    let v6 = || PacketBuilder::ethernet2(SERVER_MAC, CLIENT_MAC).ipv6(SERVER_V6, CLIENT_V6, 64);
    let tagged = || {
        PacketBuilder::ethernet2(SERVER_MAC, CLIENT_MAC)
            .single_vlan(VlanId::try_new(100).expect("vlan id"))
            .ipv4(SERVER_V4, CLIENT_V4, 64)
    };
    let mut frames = Vec::new();
    let mut push =
        |label, builder: PacketBuilderStep<TcpHeader>, payload: &[u8]| -> anyhow::Result<()> {
            let mut frame = Vec::with_capacity(builder.size(payload.len()));
            builder.write(&mut frame, payload)?;
            frames.push((label, frame));
            Ok(())
        };
    push(
        "IPv4 data segment (100 B, timestamps)",
        v4().tcp(SERVER_PORT, 40000, 1, 65535)
            .ack(2)
            .psh()
            .options(&timestamps)?,
        &payload,
    )?;
    push(
        "IPv6 data segment (100 B, timestamps)",
        v6().tcp(SERVER_PORT, 40000, 1, 65535)
            .ack(2)
            .psh()
            .options(&timestamps)?,
        &payload,
    )?;
    // A TLS session's segment on port 443: the first run resyncs on its record header, every
    // later one finds it before the next boundary (a flow lookup, no walk).
    let mut record = vec![23, 3, 3, 0, 95];
    record.resize(100, 0x5a);
    push(
        "IPv4 TLS data segment (443, flow lookup)",
        v4().tcp(443, 40000, 1, 65535)
            .ack(2)
            .psh()
            .options(&timestamps)?,
        &record,
    )?;
    push(
        "802.1Q IPv4 data segment (slow path)",
        tagged()
            .tcp(SERVER_PORT, 40000, 1, 65535)
            .ack(2)
            .psh()
            .options(&timestamps)?,
        &payload,
    )?;
    push(
        "IPv4 SYN, the same every run (retransmitted)",
        v4().tcp(40000, SERVER_PORT, 7, 65535)
            .syn()
            .options(&synack_options)?,
        &[],
    )?;
    push(
        "IPv4 SYN-ACK (ack: no SYN seen)",
        v4().tcp(SERVER_PORT, 40000, 7, 65535)
            .syn()
            .ack(2)
            .options(&synack_options)?,
        &[],
    )?;
    push(
        "IPv4 SYN-ACK (ack: the SYN above's ISN + 1)",
        v4().tcp(SERVER_PORT, 40000, 7, 65535)
            .syn()
            .ack(8)
            .options(&synack_options)?,
        &[],
    )?;
    push(
        "IPv6 SYN-ACK",
        v6().tcp(SERVER_PORT, 40000, 7, 65535)
            .syn()
            .ack(2)
            .options(&synack_options)?,
        &[],
    )?;
    Ok(frames)
}
