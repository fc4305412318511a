//! The handshake tracker in the real kernel, on crafted frames (BPF_PROG_TEST_RUN): every
//! illegal flag set yields exactly one event of its kind, legitimate segments (TFO included)
//! yield none, a handshake fed through both programs is judged statefully, a full state set
//! (or filter set) gives way only to what is unprotected, in order, and state lost to a torn
//! way hides an anomaly at worst, never invents one. Needs root.

use std::{net::SocketAddr, ops::Range, thread, time::Duration};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, RingBuf},
};
use common::test_run::{counter_total, load_classifiers, run_unchanged};
use etherparse::{PacketBuilder, TcpHeader, TcpOptionElement};
use seqwatch::{
    detectors::handshake::anomaly::Anomaly, kernel::records::decode, util::clock::Clock,
};
use seqwatch_common::{
    handshake::{AnomalyEvent, AnomalyKind, HandshakeCounter, STATE_WAYS, jhash, state_set},
    synack::FAMILY_IPV4,
};

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const URG: u8 = 0x20;
const ECE: u8 = 0x40;
const CWR: u8 = 0x80;

const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const SERVER_V4: [u8; 4] = [192, 0, 2, 1];
const CLIENT_V4: [u8; 4] = [198, 51, 100, 7];
const SERVER_PORT: u16 = 443;
const CLIENT_PORT: u16 = 51_000;
const CLIENT: ([u8; 4], u16) = (CLIENT_V4, CLIENT_PORT);
/// The state table's hash seed the tests set (the daemon's is random).
const SEED: u32 = 1;
/// The protection the tests give open handshakes, in ticks of about 1.07 s: longer than any
/// test.
const PROTECTION_TICKS: u32 = 1000;

/// A state-table set as the tests read and write it: per way a seal (4 bytes) and the
/// protection's end (4), then per way the key (40) and the handshake state (16).
type RawSet = [u8; 256];

/// Where a way's seal and state are in its set.
fn seal_bytes(way: usize) -> Range<usize> {
    8 * way..8 * way + 4
}

fn state_bytes(way: usize) -> Range<usize> {
    let entry = 32 + 56 * way;
    entry + 40..entry + 56
}

struct Tracker {
    ebpf: Ebpf,
    events: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    clock: Clock,
}

impl Tracker {
    fn load(track_state: bool) -> Tracker {
        Self::load_protecting(track_state, PROTECTION_TICKS)
    }

    /// With open handshakes protected for `ticks` of the protection clock.
    fn load_protecting(track_state: bool, ticks: u32) -> Tracker {
        let mut ebpf = load_classifiers();
        if track_state {
            let mut config =
                Array::<_, u32>::try_from(ebpf.map_mut("HANDSHAKE_CONFIG").unwrap()).unwrap();
            config.set(0, &SEED, 0).unwrap();
            config.set(1, &ticks, 0).unwrap();
        }
        let events = RingBuf::try_from(ebpf.take_map("ANOMALY_EVENTS").unwrap()).unwrap();
        let counters = PerCpuArray::try_from(ebpf.take_map("HANDSHAKE_COUNTERS").unwrap()).unwrap();
        Tracker {
            ebpf,
            events,
            counters,
            clock: Clock::now(),
        }
    }

    /// Runs one frame through the ingress (client → server) or egress (server → client)
    /// program and returns the anomalies it raised.
    fn run(&mut self, name: &str, frame: &[u8]) -> Vec<Anomaly> {
        run_unchanged(&mut self.ebpf, name, frame);
        let mut anomalies = Vec::new();
        while let Some(item) = self.events.next() {
            let event = decode::<AnomalyEvent>(&item).expect("a whole event");
            anomalies.push(Anomaly::from_event(&event, &self.clock).expect("a known kind"));
        }
        anomalies
    }

    fn ingress(&mut self, frame: &[u8]) -> Vec<Anomaly> {
        self.run("synack_ingress", frame)
    }

    fn egress(&mut self, frame: &[u8]) -> Vec<Anomaly> {
        self.run("synack_egress", frame)
    }

    fn set(&mut self, index: u32) -> RawSet {
        self.sets().get(&index, 0).unwrap()
    }

    fn write_set(&mut self, index: u32, set: &RawSet) {
        self.sets().set(index, set, 0).unwrap();
    }

    fn sets(&mut self) -> Array<&mut MapData, RawSet> {
        Array::try_from(self.ebpf.map_mut("HANDSHAKE_SLOTS").unwrap()).unwrap()
    }

    fn counter(&self, counter: HandshakeCounter) -> u64 {
        counter_total(&self.counters, counter as u32)
    }
}

/// A segment from the client to the server.
fn to_server(flags: u8, seq: u32, ack: u32, options: &[TcpOptionElement], data: &[u8]) -> Vec<u8> {
    frame(Towards::Server, CLIENT, flags, seq, ack, options, data)
}

/// A segment without options or data from any client to the server.
fn from_client(client: ([u8; 4], u16), flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    frame(Towards::Server, client, flags, seq, ack, &[], &[])
}

/// A segment from the server to the client.
fn to_client(flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    server_to(CLIENT, flags, seq, ack)
}

/// A segment without options or data from the server to any client.
fn server_to(client: ([u8; 4], u16), flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    frame(Towards::Client, client, flags, seq, ack, &[], &[])
}

enum Towards {
    Server,
    Client,
}

/// A frame between the server and `client`, either way.
fn frame(
    towards: Towards,
    client: ([u8; 4], u16),
    flags: u8,
    seq: u32,
    ack: u32,
    options: &[TcpOptionElement],
    data: &[u8],
) -> Vec<u8> {
    let server = (SERVER_V4, SERVER_PORT);
    let ((source_mac, from), (destination_mac, to)) = match towards {
        Towards::Server => ((CLIENT_MAC, client), (SERVER_MAC, server)),
        Towards::Client => ((SERVER_MAC, server), (CLIENT_MAC, client)),
    };
    let mut tcp = TcpHeader::new(from.1, to.1, seq, 29_200);
    tcp.fin = flags & FIN != 0;
    tcp.syn = flags & SYN != 0;
    tcp.rst = flags & RST != 0;
    tcp.psh = flags & PSH != 0;
    tcp.ack = flags & ACK != 0;
    tcp.urg = flags & URG != 0;
    tcp.ece = flags & ECE != 0;
    tcp.cwr = flags & CWR != 0;
    tcp.acknowledgment_number = ack;
    tcp.set_options(options).unwrap();
    let builder = PacketBuilder::ethernet2(source_mac, destination_mac)
        .ipv4(from.0, to.0, 64)
        .tcp_header(tcp);
    let mut frame = Vec::new();
    builder.write(&mut frame, data).unwrap();
    frame
}

fn kinds(anomalies: &[Anomaly]) -> Vec<AnomalyKind> {
    anomalies.iter().map(|a| a.anomaly_kind).collect()
}

#[test]
fn each_illegal_flag_set_is_one_event_of_its_kind() {
    let mut tracker = Tracker::load(false);
    let cases = [
        ("SYN+FIN", SYN | FIN, AnomalyKind::SynFin),
        ("SYN+FIN+ACK", SYN | FIN | ACK, AnomalyKind::SynFin),
        ("SYN+RST", SYN | RST, AnomalyKind::SynRst),
        ("NULL", 0, AnomalyKind::NullFlags),
        ("XMAS", FIN | PSH | URG, AnomalyKind::XmasFlags),
        ("FIN alone (FIN scan)", FIN, AnomalyKind::InvalidFlags),
        ("PSH alone", PSH, AnomalyKind::InvalidFlags),
        ("RST+FIN+ACK", RST | FIN | ACK, AnomalyKind::InvalidFlags),
        ("SYN+URG", SYN | URG, AnomalyKind::InvalidFlags),
    ];
    for (what, flags, kind) in cases {
        let anomalies = tracker.ingress(&to_server(flags, 1000, 0, &[], &[]));
        assert_eq!(kinds(&anomalies), [kind], "{what}");
        let anomaly = &anomalies[0];
        assert_eq!(
            anomaly.service,
            SocketAddr::from((SERVER_V4, SERVER_PORT)),
            "{what}"
        );
        assert_eq!(
            anomaly.source,
            SocketAddr::from((CLIENT_V4, CLIENT_PORT)),
            "{what}"
        );
        assert_eq!(
            (anomaly.seq, anomaly.direction),
            (1000, "ingress"),
            "{what}"
        );
    }
    // On egress the local side is the sender.
    let anomalies = tracker.egress(&to_client(0, 5, 0));
    assert_eq!(kinds(&anomalies), [AnomalyKind::NullFlags]);
    assert_eq!(
        anomalies[0].service,
        SocketAddr::from((SERVER_V4, SERVER_PORT))
    );
}

#[test]
fn legitimate_segments_raise_nothing_and_tfo_is_counted_apart() {
    let mut tracker = Tracker::load(false);
    let legitimate = [
        ("SYN", to_server(SYN, 1, 0, &[], &[])),
        (
            "SYN with ECN setup",
            to_server(SYN | ECE | CWR, 1, 0, &[], &[]),
        ),
        ("SYN-ACK", to_client(SYN | ACK, 7, 2)),
        ("ACK", to_server(ACK, 2, 8, &[], &[])),
        (
            "data",
            to_server(ACK | PSH, 2, 8, &[], b"GET / HTTP/1.1\r\n"),
        ),
        ("URG data", to_server(ACK | URG, 2, 8, &[], b"!")),
        ("FIN+ACK", to_server(FIN | ACK, 2, 8, &[], &[])),
        ("RST", to_server(RST, 2, 0, &[], &[])),
        ("RST+ACK", to_server(RST | ACK, 2, 8, &[], &[])),
    ];
    for (what, frame) in legitimate {
        assert_eq!(kinds(&tracker.ingress(&frame)), [], "{what}");
    }
    // Linux's SYN options (20 bytes), then a TFO cookie where the walk must find it.
    let tfo_encodings: [(&str, &[u8]); 2] = [
        ("TFO option (kind 34)", &[34, 10, 1, 2, 3, 4, 5, 6, 7, 8]),
        (
            "experimental TFO (kind 254, magic F989)",
            &[254, 12, 0xf9, 0x89, 1, 2, 3, 4, 5, 6, 7, 8],
        ),
    ];
    for (count, (what, cookie)) in (1..).zip(tfo_encodings) {
        let tfo_syn = syn_with_data_after_linux_options(cookie);
        assert_eq!(kinds(&tracker.ingress(&tfo_syn)), [], "{what}");
        assert_eq!(tracker.counter(HandshakeCounter::TfoSyns), count, "{what}");
    }
    let not_tfo: [(&str, &[u8]); 3] = [
        ("no cookie", &[]),
        ("kind 254 without the magic", &[254, 6, 0xf9, 0x88, 1, 2]),
        ("end of list before the cookie", &[0, 34, 2]),
    ];
    for (what, trailing) in not_tfo {
        assert_eq!(
            kinds(&tracker.ingress(&syn_with_data_after_linux_options(trailing))),
            [AnomalyKind::SynWithData],
            "{what}"
        );
    }
    assert_eq!(tracker.counter(HandshakeCounter::TfoSyns), 2);
}

/// A SYN with data whose options are Linux's usual ones followed by `trailing` bytes, padded
/// with NOPs to a multiple of four.
fn syn_with_data_after_linux_options(trailing: &[u8]) -> Vec<u8> {
    let nops = trailing.len().div_ceil(4) * 4;
    let mut options = vec![
        TcpOptionElement::MaximumSegmentSize(1460),
        TcpOptionElement::SelectiveAcknowledgementPermitted,
        TcpOptionElement::Timestamp(1, 0),
        TcpOptionElement::Noop,
        TcpOptionElement::WindowScale(7),
    ];
    options.extend(std::iter::repeat_n(TcpOptionElement::Noop, nops));
    let mut syn = to_server(SYN, 1, 0, &options, b"hello");
    let trailing_start = 14 + 20 + 20 + 20;
    syn[trailing_start..trailing_start + trailing.len()].copy_from_slice(trailing);
    syn
}

/// Client ISN 1000, our ISN 5000: the third packet must be seq 1001, ack 5001.
fn open_handshake(tracker: &mut Tracker) {
    assert_eq!(
        kinds(&tracker.ingress(&to_server(SYN, 1000, 0, &[], &[]))),
        []
    );
    assert_eq!(
        kinds(&tracker.egress(&to_client(SYN | ACK, 5000, 1001))),
        []
    );
}

#[test]
fn the_third_packet_is_judged_against_our_synack() {
    let cases = [
        (1001, 9999, AnomalyKind::HandshakeAckWrongAck),
        (1001 + (1 << 30), 5001, AnomalyKind::HandshakeAckWrongSeq),
        (7, 9999, AnomalyKind::HandshakeAckWrongSeqAndAck),
    ];
    for (seq, ack, kind) in cases {
        let mut tracker = Tracker::load(true);
        open_handshake(&mut tracker);
        let anomalies = tracker.ingress(&to_server(ACK, seq, ack, &[], &[]));
        assert_eq!(kinds(&anomalies), [kind]);
        let anomaly = &anomalies[0];
        assert_eq!(
            (anomaly.expected_seq, anomaly.expected_ack),
            (Some(1001), Some(5001))
        );
        // The right third packet still completes it; a later SYN is then a reuse attempt.
        assert_eq!(
            kinds(&tracker.ingress(&to_server(ACK, 1001, 5001, &[], &[]))),
            []
        );
        assert_eq!(
            kinds(&tracker.ingress(&to_server(SYN, 3000, 0, &[], &[]))),
            [AnomalyKind::SynOnEstablished]
        );
    }
}

#[test]
fn retransmissions_rsts_and_early_segments_are_judged() {
    let mut tracker = Tracker::load(true);
    open_handshake(&mut tracker);
    assert_eq!(
        kinds(&tracker.ingress(&to_server(SYN, 1000, 0, &[], &[]))),
        [],
        "same ISN"
    );
    let syn = tracker.ingress(&to_server(SYN, 1234, 0, &[], &[]));
    assert_eq!(kinds(&syn), [AnomalyKind::SynRetransmitDifferentIsn]);
    assert_eq!(syn[0].expected_seq, Some(1000));
    assert_eq!(
        kinds(&tracker.egress(&to_client(SYN | ACK, 5000, 1001))),
        [],
        "same SYN-ACK"
    );
    assert_eq!(
        kinds(&tracker.egress(&to_client(SYN | ACK, 6000, 1001))),
        [AnomalyKind::SynAckRetransmitDifferentSeq]
    );
    assert_eq!(
        kinds(&tracker.egress(&to_client(SYN | ACK, 5000, 1235))),
        [AnomalyKind::SynAckRetransmitDifferentAck]
    );
    // Not the tracker's to report: the SYN-ACK origin check's (`tests/synack_origin.rs`), off
    // in these runs.
    assert_eq!(
        kinds(&tracker.ingress(&to_server(SYN | ACK, 77, 5001, &[], &[]))),
        []
    );
    assert_eq!(
        kinds(&tracker.ingress(&to_server(FIN | ACK, 1001, 42, &[], &[]))),
        [AnomalyKind::FinBeforeHandshake]
    );
    let rst = tracker.ingress(&to_server(RST, 1001 + (1 << 20), 0, &[], &[]));
    assert_eq!(kinds(&rst), [AnomalyKind::RstOutOfWindow]);
    assert_eq!(rst[0].expected_seq, Some(1001));
    // An in-window RST ends the handshake: the next SYN starts a new one.
    assert_eq!(
        kinds(&tracker.ingress(&to_server(RST, 1001, 0, &[], &[]))),
        []
    );
    assert_eq!(
        kinds(&tracker.ingress(&to_server(SYN, 9000, 0, &[], &[]))),
        []
    );
    // No SYN-ACK sent yet: data and ACKs answer nothing we said.
    assert_eq!(
        kinds(&tracker.ingress(&to_server(ACK | PSH, 9001, 1, &[], b"x"))),
        [AnomalyKind::DataBeforeHandshake]
    );
    assert_eq!(
        kinds(&tracker.ingress(&to_server(ACK, 9001, 1, &[], &[]))),
        [AnomalyKind::AckWithoutSynAck]
    );
    assert!(tracker.counter(HandshakeCounter::StateLookups) > 0);
}

/// A simultaneous open: the peer's SYN-ACK repeats its ISN and acks ours.
#[test]
fn a_simultaneous_open_is_not_a_synack_to_a_listener() {
    let mut tracker = Tracker::load(true);
    open_handshake(&mut tracker);
    assert_eq!(
        kinds(&tracker.ingress(&to_server(SYN | ACK, 1000, 5001, &[], &[]))),
        []
    );
    assert_eq!(
        kinds(&tracker.ingress(&to_server(SYN, 1000, 0, &[], &[]))),
        [AnomalyKind::SynOnEstablished],
        "it completed the handshake"
    );
}

/// Our RST without ACK answers a segment that had one: during the handshake a bad third
/// packet, and the kernel keeps its request, so the tracker keeps its state. A RST with ACK
/// is the kernel ending the handshake (an embryonic reset answering a SYN with another ISN,
/// or an aborted socket): a SYN on the 4-tuple afterwards starts a new handshake.
#[test]
fn our_rst_keeps_the_handshake_only_when_it_answers_a_bad_third_packet() {
    let mut tracker = Tracker::load(true);
    open_handshake(&mut tracker);
    assert_eq!(
        kinds(&tracker.ingress(&to_server(ACK, 1001, 9999, &[], &[]))),
        [AnomalyKind::HandshakeAckWrongAck]
    );
    assert_eq!(kinds(&tracker.egress(&to_client(RST, 9999, 0))), []);
    assert_eq!(
        kinds(&tracker.ingress(&to_server(SYN, 1000, 0, &[], &[]))),
        [],
        "the same SYN: a retransmission"
    );
    assert_eq!(
        kinds(&tracker.ingress(&to_server(SYN, 1100, 0, &[], &[]))),
        [AnomalyKind::SynRetransmitDifferentIsn],
        "the request is still open"
    );
    let kernel_ended = [
        ("embryonic reset", to_client(RST | ACK, 0, 1101)),
        ("aborted socket", to_client(RST | ACK, 5001, 1001)),
    ];
    for (what, rst) in kernel_ended {
        assert_eq!(kinds(&tracker.egress(&rst)), [], "{what}");
        let new_handshake = [
            tracker.ingress(&to_server(SYN, 90_000, 0, &[], &[])),
            tracker.egress(&to_client(SYN | ACK, 7000, 90_001)),
            tracker.ingress(&to_server(ACK, 90_001, 7001, &[], &[])),
        ];
        assert_eq!(new_handshake.map(|a| kinds(&a)), [[], [], []], "{what}");
        assert_eq!(
            kinds(&tracker.ingress(&to_server(SYN, 5, 0, &[], &[]))),
            [AnomalyKind::SynOnEstablished],
            "{what}: the new handshake completed"
        );
        // Closed, then opened as at the start, for the next case.
        assert_eq!(
            kinds(&tracker.ingress(&to_server(RST, 90_001, 0, &[], &[]))),
            []
        );
        open_handshake(&mut tracker);
    }
}

/// A simultaneous open whose SYN-ACK reached our kernel before the peer's SYN: the SYN-ACK
/// completed our connect(), so no SYN-ACK of ours follows (or a late one, when the SYN won
/// after all); either way nothing is flagged, and the close is not early.
#[test]
fn a_simultaneous_open_completes_before_our_synack() {
    for our_late_synack in [false, true] {
        let mut tracker = Tracker::load(true);
        let mut sequence = vec![
            tracker.ingress(&to_server(SYN, 1000, 0, &[], &[])),
            tracker.ingress(&to_server(SYN | ACK, 1000, 5001, &[], &[])),
        ];
        if our_late_synack {
            sequence.push(tracker.egress(&to_client(SYN | ACK, 5000, 1001)));
        }
        sequence.push(tracker.ingress(&to_server(SYN | ACK, 1000, 5001, &[], &[])));
        sequence.push(tracker.ingress(&to_server(ACK, 1001, 5001, &[], &[])));
        assert!(sequence.iter().all(Vec::is_empty), "{sequence:?}");
        assert_eq!(
            kinds(&tracker.ingress(&to_server(SYN, 77, 0, &[], &[]))),
            [AnomalyKind::SynOnEstablished],
            "it completed the handshake"
        );
        assert_eq!(
            kinds(&tracker.ingress(&to_server(FIN | ACK, 1001, 5001, &[], &[]))),
            []
        );
    }
}

/// Without both directions attached the daemon leaves the stateful checks off.
#[test]
fn stateful_checks_are_off_unless_enabled() {
    let mut tracker = Tracker::load(false);
    open_handshake(&mut tracker);
    assert_eq!(
        kinds(&tracker.ingress(&to_server(ACK, 1001, 9999, &[], &[]))),
        []
    );
    assert_eq!(tracker.counter(HandshakeCounter::StateLookups), 0);
}

/// The state-table set of a client's handshake with the server: its key's words (local =
/// the server; addresses as on the wire, ports in host order, then the family) hashed with
/// the tests' seed.
fn set_of(client: ([u8; 4], u16)) -> u32 {
    let mut words = [0u32; 10];
    words[0] = u32::from_ne_bytes(SERVER_V4);
    words[4] = u32::from_ne_bytes(client.0);
    words[8] = u32::from(SERVER_PORT) | u32::from(client.1) << 16;
    words[9] = u32::from(FAMILY_IPV4);
    state_set(jhash(&words, SEED))
}

/// The open-handshake filter's set of a client's handshake: its tag (the kernel's
/// `packet::tuple_mix` of the remote address and both ports, made odd) picks one of 32 768.
fn filter_set_of(client: ([u8; 4], u16)) -> u32 {
    let ports = u32::from(client.1) << 16 | u32::from(SERVER_PORT);
    let hash = u32::from_be_bytes(client.0).wrapping_mul(0x9e37_79b1) ^ ports;
    let hash = hash.wrapping_mul(0x85eb_ca6b);
    let tag = (hash ^ (hash >> 15)) | 1;
    (tag >> 8) & ((1 << 15) - 1)
}

fn seal(set: &RawSet, way: usize) -> u32 {
    u32::from_ne_bytes(set[seal_bytes(way)].try_into().unwrap())
}

/// `count` clients other than `CLIENT` for which `place` says the same as for `CLIENT`.
fn clients_sharing(place: fn(([u8; 4], u16)) -> u32, count: usize) -> Vec<([u8; 4], u16)> {
    let wanted = place(CLIENT);
    (1..=254u8)
        .flat_map(|host| (1024..=u16::MAX).map(move |port| ([198, 51, 100, host], port)))
        .filter(|&client| client != CLIENT && place(client) == wanted)
        .take(count)
        .collect()
}

/// A client's handshake opened with client ISN `isn` and our ISN `isn + 4000`: its third
/// packet is due with seq `isn + 1` and ack `isn + 4001`.
fn open_from(tracker: &mut Tracker, client: ([u8; 4], u16), isn: u32) {
    let opened = [
        tracker.ingress(&from_client(client, SYN, isn, 0)),
        tracker.egress(&server_to(client, SYN | ACK, isn + 4000, isn + 1)),
    ];
    assert_eq!(opened.map(|a| kinds(&a)), [[], []], "{client:?}");
}

/// Whether a wrong-ack third packet from `client` (opened by `open_from` with `isn`) is
/// flagged, with the numbers its handshake expects.
fn guess_is_flagged(tracker: &mut Tracker, client: ([u8; 4], u16), isn: u32) -> bool {
    let anomalies = tracker.ingress(&from_client(client, ACK, isn + 1, 99));
    match kinds(&anomalies)[..] {
        [] => false,
        [AnomalyKind::HandshakeAckWrongAck] => {
            let expected = (anomalies[0].expected_seq, anomalies[0].expected_ack);
            assert_eq!(expected, (Some(isn + 1), Some(isn + 4001)), "{client:?}");
            true
        }
        ref other => panic!("{client:?}: {other:?}"),
    }
}

/// A flood cannot flush open handshakes: with every way of a set holding one whose SYN-ACK a
/// socket sent (BPF_PROG_TEST_RUN gives every frame one), a new handshake of that set is
/// refused and counted, and each open one is still judged with its own numbers.
#[test]
fn a_set_of_open_handshakes_refuses_a_new_one() {
    let mut tracker = Tracker::load(true);
    let clients = clients_sharing(set_of, STATE_WAYS as usize + 1);
    let (open, newcomer) = clients.split_at(STATE_WAYS as usize);
    for (isn, &client) in (1000..).step_by(1000).zip(open) {
        open_from(&mut tracker, client, isn);
    }
    open_from(&mut tracker, newcomer[0], 9000);
    assert_eq!(
        tracker.counter(HandshakeCounter::StateRefused),
        2,
        "its SYN and SYN-ACK"
    );
    assert!(
        !guess_is_flagged(&mut tracker, newcomer[0], 9000),
        "not tracked"
    );
    for (isn, &client) in (1000..).step_by(1000).zip(open) {
        assert!(
            guess_is_flagged(&mut tracker, client, isn),
            "{client:?} kept"
        );
    }
    let evicted = [
        HandshakeCounter::EvictedCookie,
        HandshakeCounter::EvictedUnanswered,
        HandshakeCounter::EvictedCompleted,
        HandshakeCounter::EvictedExpired,
    ];
    assert!(evicted.iter().all(|&counter| tracker.counter(counter) == 0));
}

/// In a full set a new handshake takes the way of the entry that matters least: a SYN not
/// answered before a completed handshake, and open handshakes not at all; each eviction is
/// counted by what it took.
#[test]
fn a_full_set_gives_way_unanswered_then_completed() {
    let mut tracker = Tracker::load(true);
    let clients = clients_sharing(set_of, 6);
    let [completed, unanswered, open_a, open_b, first_new, second_new] = clients[..] else {
        unreachable!("six clients")
    };
    open_from(&mut tracker, completed, 1000);
    assert_eq!(
        kinds(&tracker.ingress(&from_client(completed, ACK, 1001, 5001))),
        []
    );
    assert_eq!(
        kinds(&tracker.ingress(&from_client(unanswered, SYN, 2000, 0))),
        []
    );
    open_from(&mut tracker, open_a, 3000);
    open_from(&mut tracker, open_b, 4000);
    open_from(&mut tracker, first_new, 5000);
    assert_eq!(tracker.counter(HandshakeCounter::EvictedUnanswered), 1);
    assert_eq!(
        kinds(&tracker.ingress(&from_client(unanswered, ACK, 2001, 0))),
        [],
        "its state is gone: no ack_without_synack"
    );
    open_from(&mut tracker, second_new, 6000);
    assert_eq!(tracker.counter(HandshakeCounter::EvictedCompleted), 1);
    assert_eq!(
        kinds(&tracker.ingress(&from_client(completed, SYN, 1000, 0))),
        [],
        "its state is gone: no syn_on_established"
    );
    assert_eq!(
        tracker.counter(HandshakeCounter::StateRefused),
        1,
        "that SYN"
    );
    for (client, isn) in [
        (open_a, 3000),
        (open_b, 4000),
        (first_new, 5000),
        (second_new, 6000),
    ] {
        assert!(guess_is_flagged(&mut tracker, client, isn), "{client:?}");
    }
}

/// An open handshake is protected for as long as the kernel may keep its request (here one
/// tick): after that a new handshake may take its way, counted as expired.
#[test]
fn protection_runs_out() {
    let mut tracker = Tracker::load_protecting(true, 1);
    let clients = clients_sharing(set_of, STATE_WAYS as usize + 1);
    let (open, newcomer) = clients.split_at(STATE_WAYS as usize);
    for (isn, &client) in (1000..).step_by(1000).zip(open) {
        open_from(&mut tracker, client, isn);
    }
    // Two ticks of the protection clock (2^30 ns each).
    thread::sleep(Duration::from_millis(2200));
    open_from(&mut tracker, newcomer[0], 9000);
    assert_eq!(tracker.counter(HandshakeCounter::StateRefused), 0);
    assert_eq!(tracker.counter(HandshakeCounter::EvictedExpired), 1);
    assert!(guess_is_flagged(&mut tracker, newcomer[0], 9000));
    let kept = (1000..)
        .step_by(1000)
        .zip(open)
        .filter(|&(isn, &client)| guess_is_flagged(&mut tracker, client, isn))
        .count();
    assert_eq!(kept, STATE_WAYS as usize - 1, "one gave way");
}

/// The open-handshake filter, which lets a third packet through to the state table, gives way
/// as the table does: with its set full of protected tags a new handshake is refused (and
/// its state taken back out), and the open ones' third packets are still judged.
#[test]
fn a_filter_set_of_open_handshakes_refuses_a_new_one() {
    let mut tracker = Tracker::load(true);
    let mut clients = clients_sharing(filter_set_of, 8);
    clients.retain(|&client| set_of(client) != set_of(CLIENT));
    let newcomer = clients[3];
    open_handshake(&mut tracker);
    for (isn, &client) in (10_000..).step_by(1000).zip(&clients[..3]) {
        open_from(&mut tracker, client, isn);
    }
    open_from(&mut tracker, newcomer, 90_000);
    assert_eq!(tracker.counter(HandshakeCounter::StateRefused), 2);
    assert!(!guess_is_flagged(&mut tracker, newcomer, 90_000));
    assert_eq!(
        kinds(&tracker.ingress(&from_client(newcomer, FIN | ACK, 90_001, 99))),
        [],
        "its state was taken back out: no fin_before_handshake"
    );
    assert!(guess_is_flagged(&mut tracker, CLIENT, 1000));
    for (isn, &client) in (10_000..).step_by(1000).zip(&clients[..3]) {
        assert!(guess_is_flagged(&mut tracker, client, isn), "{client:?}");
    }
}

/// Two CPUs writing one way at once can leave one handshake's key beside another's state.
/// The seal no longer matches, so the way reads as empty: the right third packet is not
/// judged against the other handshake's numbers (which would make it a wrong seq and ack).
#[test]
fn a_torn_way_reads_as_empty() {
    let mut tracker = Tracker::load(true);
    let other = (CLIENT_V4, CLIENT_PORT + 1);
    assert_ne!(set_of(other), set_of(CLIENT));
    open_handshake(&mut tracker);
    let other_handshake = [
        tracker.ingress(&from_client(other, SYN, 3000, 0)),
        tracker.egress(&server_to(other, SYN | ACK, 8000, 3001)),
    ];
    assert_eq!(other_handshake.map(|a| kinds(&a)), [[], []]);
    // Each is in the first way of its own (otherwise empty) set.
    let (ours, theirs) = (tracker.set(set_of(CLIENT)), tracker.set(set_of(other)));
    assert!(seal(&ours, 0) != 0 && seal(&theirs, 0) != 0);
    let mut torn = ours;
    torn[state_bytes(0)].copy_from_slice(&theirs[state_bytes(0)]);
    tracker.write_set(set_of(CLIENT), &torn);
    let lookups = tracker.counter(HandshakeCounter::StateLookups);
    assert_eq!(
        kinds(&tracker.ingress(&to_server(ACK, 1001, 5001, &[], &[]))),
        []
    );
    assert_eq!(tracker.counter(HandshakeCounter::StateLookups), lookups + 1);
    // The way as it was is read whole again: the torn copy was refused for its seal alone.
    tracker.write_set(set_of(CLIENT), &ours);
    assert_eq!(
        kinds(&tracker.ingress(&to_server(ACK, 1001, 9999, &[], &[]))),
        [AnomalyKind::HandshakeAckWrongAck]
    );
}
