//! The SYN-ACK origin check in the real kernel, on crafted frames (BPF_PROG_TEST_RUN): with
//! ingress sampling on, an arriving SYN-ACK is sampled only when it answers a SYN that left by
//! its interface on its 4-tuple (ack = that SYN's ISN + 1); every other one is refused and
//! reported, as `synack_to_listener` at a listening port (no handshake state needed) and as
//! `unsolicited_synack` elsewhere. A SYN taking another's record (a flood's doing) makes that
//! answer miss, never a forged one match; forwarded SYN-ACKs judged as they came in are not
//! judged again on egress, and another namespace's veth samples only answers. With
//! the check off (the default, egress only) the egress path is as before. Needs root.

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{TestRun, TestRunOptions},
};
use common::test_run::{classifier, counter_total};
use etherparse::PacketBuilder;
use seqwatch::{
    detectors::{
        handshake::anomaly::Anomaly,
        isn::{self, sample::Sample},
    },
    kernel::{self, records::decode},
    lab::{Lab, LabOptions},
    util::clock::Clock,
};
use seqwatch_common::{
    handshake::{AnomalyEvent, AnomalyKind, jhash},
    packet::Counter,
    synack_origin::{JUDGES_SEGMENTS, JUDGES_SYNACKS, RECORD_KEY_WORDS, slot_of},
};

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

const HOST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
/// This host, and a connection of its.
const HOST: ([u8; 4], u16) = ([198, 51, 100, 7], 51_000);
/// The remote server it connects to.
const PEER: ([u8; 4], u16) = ([192, 0, 2, 1], 443);
/// A port of this host with a listener.
const LISTENING_PORT: u16 = 8080;
/// The records' hash seed the tests set (the daemon's is random).
const SEED: u32 = 7;
/// The interface of a BPF_PROG_TEST_RUN packet unless its context names another: loopback.
const LOOPBACK: u32 = 1;
/// The interface a forwarded packet came in by, as its context says.
const CAME_IN_BY: u32 = 2;

/// `__sk_buff` offsets of the two fields a test run's context sets (uapi `linux/bpf.h`).
const INGRESS_IFINDEX: usize = 36;
const IFINDEX: usize = 40;

type Endpoint = ([u8; 4], u16);

struct Check {
    ebpf: Ebpf,
    rings: Vec<RingBuf<MapData>>,
    anomalies: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    clock: Clock,
}

/// What one frame did.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// (server, client, seq, ack) of each sample.
    sampled: Vec<(String, String, u32, u32)>,
    reported: Vec<AnomalyKind>,
}

impl Outcome {
    fn sampled(seq: u32, ack: u32, (from, to): (Endpoint, Endpoint)) -> Outcome {
        Outcome {
            sampled: vec![(address(from), address(to), seq, ack)],
            reported: vec![],
        }
    }

    fn reported(kind: AnomalyKind) -> Outcome {
        Outcome {
            sampled: vec![],
            reported: vec![kind],
        }
    }

    fn nothing() -> Outcome {
        Outcome {
            sampled: vec![],
            reported: vec![],
        }
    }
}

fn address((ip, port): Endpoint) -> String {
    format!("{}.{}.{}.{}:{port}", ip[0], ip[1], ip[2], ip[3])
}

impl Check {
    /// The daemon's object with its classifiers, the check's seed given (0: off) as the
    /// daemon gives it, and the sampler's rings.
    fn load(seed: u32) -> Check {
        let mut ebpf = EbpfLoader::new()
            .override_global("SYNACK_ORIGIN_SEED", &seed, true)
            .load(kernel::object().unwrap())
            .unwrap();
        let programs = ["synack_egress", "synack_ingress", "synack_from_netns"];
        for name in programs.into_iter().chain([kernel::SYN_RECORDER]) {
            classifier(&mut ebpf, name).load().unwrap();
        }
        let rings = isn::sample_rings(&mut ebpf).unwrap();
        let anomalies = RingBuf::try_from(ebpf.take_map("ANOMALY_EVENTS").unwrap()).unwrap();
        let counters = PerCpuArray::try_from(ebpf.take_map("PACKET_COUNTERS").unwrap()).unwrap();
        let mut listening = Array::<_, u32>::try_from(ebpf.map_mut("LISTENING").unwrap()).unwrap();
        listening.set(u32::from(LISTENING_PORT), &1, 0).unwrap();
        Check {
            ebpf,
            rings,
            anomalies,
            counters,
            clock: Clock::now(),
        }
    }

    /// A frame leaving by the test run's interface.
    fn leaving(&mut self, frame: &[u8]) -> Outcome {
        self.run("synack_egress", frame, &context(0, LOOPBACK))
    }

    /// A frame arriving by the test run's interface.
    fn arriving(&mut self, frame: &[u8]) -> Outcome {
        self.run("synack_ingress", frame, &context(0, LOOPBACK))
    }

    /// Runs one frame through a classifier (which must pass it on) and returns what it did.
    fn run(&mut self, program: &str, frame: &[u8], context: &[u8]) -> Outcome {
        let result = classifier(&mut self.ebpf, program)
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(context),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(result.return_value, u32::MAX, "TC_ACT_UNSPEC, always");
        let mut records = Vec::new();
        isn::take_records(&mut self.rings, &mut records);
        let sampled = records
            .iter()
            .map(Sample::from_record)
            .map(|s| (s.server.to_string(), s.client.to_string(), s.seq, s.ack))
            .collect();
        let mut reported = Vec::new();
        while let Some(item) = self.anomalies.next() {
            let event = decode::<AnomalyEvent>(&item).unwrap();
            let anomaly = Anomaly::from_event(&event, &self.clock).unwrap();
            reported.push(anomaly.anomaly_kind);
        }
        Outcome { sampled, reported }
    }

    /// Marks an interface as one whose ingress classifier judges `judged`, as the daemon
    /// does when it attaches one.
    fn judge_at_ingress(&mut self, ifindex: u32, judged: u32) {
        let map = self.ebpf.map_mut("JUDGED_AT_INGRESS").unwrap();
        let mut judged_at_ingress = HashMap::<_, u32, u32>::try_from(map).unwrap();
        judged_at_ingress.insert(&ifindex, &judged, 0).unwrap();
    }

    fn counter(&self, counter: Counter) -> u64 {
        counter_total(&self.counters, counter as u32)
    }
}

/// A test run's `__sk_buff`, up to `ifindex`: the interface a packet came in by (0: built
/// here) and the one it is on.
fn context(ingress_ifindex: u32, ifindex: u32) -> Vec<u8> {
    let mut context = vec![0u8; IFINDEX + 4];
    context[INGRESS_IFINDEX..IFINDEX].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    context[IFINDEX..].copy_from_slice(&ifindex.to_ne_bytes());
    context
}

/// An IPv4 TCP segment without options or data.
fn segment(ends: (Endpoint, Endpoint), flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    segment_with_data(ends, flags, seq, ack, &[])
}

/// An IPv4 TCP segment without options.
fn segment_with_data(
    (from, to): (Endpoint, Endpoint),
    flags: u8,
    seq: u32,
    ack: u32,
    data: &[u8],
) -> Vec<u8> {
    let mut tcp = etherparse::TcpHeader::new(from.1, to.1, seq, 29_200);
    tcp.syn = flags & SYN != 0;
    tcp.ack = flags & ACK != 0;
    tcp.rst = flags & RST != 0;
    tcp.fin = flags & FIN != 0;
    tcp.acknowledgment_number = ack;
    let builder = PacketBuilder::ethernet2(HOST_MAC, PEER_MAC)
        .ipv4(from.0, to.0, 64)
        .tcp_header(tcp);
    let mut frame = Vec::new();
    builder.write(&mut frame, data).unwrap();
    frame
}

/// This host's SYN from `host` to the peer, with ISN `isn`.
fn syn(host: Endpoint, isn: u32) -> Vec<u8> {
    segment((host, PEER), SYN, isn, 0)
}

/// The peer's SYN-ACK to `host`.
fn synack(host: Endpoint, seq: u32, ack: u32) -> Vec<u8> {
    segment((PEER, host), SYN | ACK, seq, ack)
}

fn answer(host: Endpoint, seq: u32, ack: u32) -> Outcome {
    Outcome::sampled(seq, ack, (PEER, host))
}

#[test]
fn an_arriving_synack_is_sampled_only_when_it_answers_a_syn_that_left() {
    let mut check = Check::load(SEED);
    let unsolicited = || Outcome::reported(AnomalyKind::UnsolicitedSynAck);
    assert_eq!(
        check.arriving(&synack(HOST, 5000, 1001)),
        unsolicited(),
        "no SYN"
    );
    assert_eq!(check.leaving(&syn(HOST, 1000)), Outcome::nothing());
    assert_eq!(check.counter(Counter::SynsRecorded), 1);
    assert_eq!(
        check.arriving(&synack(HOST, 5000, 1002)),
        unsolicited(),
        "another ack"
    );
    let other_port = (HOST.0, HOST.1 + 1);
    assert_eq!(
        check.arriving(&synack(other_port, 5000, 1001)),
        unsolicited(),
        "another 4-tuple"
    );
    assert_eq!(
        check.arriving(&synack(HOST, 5000, 1001)),
        answer(HOST, 5000, 1001)
    );
    assert_eq!(
        check.arriving(&synack(HOST, 5000, 1001)),
        answer(HOST, 5000, 1001),
        "its retransmission (the scorer drops it as one)"
    );
    assert_eq!(
        check.arriving(&synack(HOST, 6000, 1001)),
        unsolicited(),
        "a second answer with another ISN"
    );
    assert_eq!(check.counter(Counter::SynAcksUnsolicited), 4);
    // Not SYNs: a SYN-ACK, RST or FIN leaving records nothing.
    for flags in [SYN | ACK, RST, FIN | ACK, ACK] {
        check.leaving(&segment((HOST, PEER), flags, 1, 2));
    }
    assert_eq!(check.counter(Counter::SynsRecorded), 1);

    // A new connection on the 4-tuple (another ISN) replaces the record; answered as usual.
    assert_eq!(check.leaving(&syn(HOST, 77_000)), Outcome::nothing());
    assert_eq!(
        check.arriving(&synack(HOST, 9000, 77_001)),
        answer(HOST, 9000, 77_001)
    );
}

/// IPv6: a record holds both whole addresses, so an answer from an address that differs from
/// the SYN's destination in its first half only is refused.
#[test]
fn an_ipv6_answer_must_come_from_the_whole_address_the_syn_went_to() {
    let mut check = Check::load(SEED);
    let host: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 7];
    let peer: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
    let mut elsewhere = peer;
    elsewhere[7] = 2;
    let v6 = |from: [u8; 16], to: [u8; 16], flags: u8, seq: u32, ack: u32| {
        let mut tcp = etherparse::TcpHeader::new(443, 51_000, seq, 29_200);
        if from == host {
            (tcp.source_port, tcp.destination_port) = (51_000, 443);
        }
        tcp.syn = flags & SYN != 0;
        tcp.ack = flags & ACK != 0;
        tcp.acknowledgment_number = ack;
        let builder = PacketBuilder::ethernet2(HOST_MAC, PEER_MAC)
            .ipv6(from, to, 64)
            .tcp_header(tcp);
        let mut frame = Vec::new();
        builder.write(&mut frame, &[]).unwrap();
        frame
    };
    assert_eq!(
        check.leaving(&v6(host, peer, SYN, 1000, 0)),
        Outcome::nothing()
    );
    assert_eq!(
        check.arriving(&v6(elsewhere, host, SYN | ACK, 5000, 1001)),
        Outcome::reported(AnomalyKind::UnsolicitedSynAck)
    );
    let sampled = check
        .arriving(&v6(peer, host, SYN | ACK, 5000, 1001))
        .sampled;
    assert_eq!(
        sampled,
        [(
            "[2001:db8:0:1::1]:443".to_owned(),
            "[2001:db8:0:7::7]:51000".to_owned(),
            5000,
            1001
        )]
    );
}

/// A TCP Fast Open SYN carries data: the answer acks it too when the server takes it, and
/// only the SYN otherwise; any other ack is refused.
#[test]
fn a_fast_open_synack_may_ack_the_syns_data() {
    let mut check = Check::load(SEED);
    let data = b"hello";
    let fast_open_syn = |host| segment_with_data((host, PEER), SYN, 1000, 0, data);
    let taken = HOST;
    check.leaving(&fast_open_syn(taken));
    assert_eq!(
        check.arriving(&synack(taken, 5000, 1006)),
        answer(taken, 5000, 1006),
        "data taken"
    );
    assert_eq!(
        check.arriving(&synack(taken, 5000, 1006)),
        answer(taken, 5000, 1006),
        "its retransmission"
    );
    let not_taken = (HOST.0, HOST.1 + 1);
    check.leaving(&fast_open_syn(not_taken));
    assert_eq!(
        check.arriving(&synack(not_taken, 6000, 1005)),
        Outcome::reported(AnomalyKind::UnsolicitedSynAck),
        "part of the data"
    );
    assert_eq!(
        check.arriving(&synack(not_taken, 6000, 1001)),
        answer(not_taken, 6000, 1001),
        "data not taken"
    );
}

/// `--direction ingress` records the SYNs with the SYN recorder alone on egress.
#[test]
fn the_syn_recorder_records_what_ingress_sampling_needs() {
    let mut check = Check::load(SEED);
    let on_loopback = context(0, LOOPBACK);
    let recorded = check.run(kernel::SYN_RECORDER, &syn(HOST, 1000), &on_loopback);
    assert_eq!(recorded, Outcome::nothing());
    let own_synack = segment((HOST, PEER), SYN | ACK, 1, 2);
    assert_eq!(
        check.run(kernel::SYN_RECORDER, &own_synack, &on_loopback),
        Outcome::nothing(),
        "it samples nothing"
    );
    assert_eq!(
        check.arriving(&synack(HOST, 5000, 1001)),
        answer(HOST, 5000, 1001)
    );
}

#[test]
fn a_synack_to_a_listening_port_is_reported_without_handshake_state() {
    let mut check = Check::load(SEED);
    let listener = (HOST.0, LISTENING_PORT);
    assert_eq!(
        check.arriving(&synack(listener, 5000, 1001)),
        Outcome::reported(AnomalyKind::SynAckToListener)
    );
    // A simultaneous open: the peer's SYN-ACK answers our SYN from the listening port.
    check.leaving(&syn(listener, 1000));
    assert_eq!(
        check.arriving(&synack(listener, 5000, 1001)),
        answer(listener, 5000, 1001)
    );
}

/// The check off, as in the default configuration: egress SYN-ACKs are sampled as before,
/// forwarded ones too; arriving ones are never sampled (the daemon turns the check on with
/// ingress sampling), and nothing is recorded or reported.
#[test]
fn with_the_check_off_only_egress_synacks_are_sampled() {
    let mut check = Check::load(0);
    let own = segment((PEER, HOST), SYN | ACK, 5000, 1001);
    assert_eq!(check.leaving(&own), answer(HOST, 5000, 1001));
    let forwarded = check.run("synack_egress", &own, &context(2, LOOPBACK));
    assert_eq!(forwarded, answer(HOST, 5000, 1001));
    check.leaving(&syn(HOST, 1000));
    assert_eq!(
        check.arriving(&synack(HOST, 5000, 1001)),
        Outcome::nothing()
    );
    for counter in [
        Counter::SynsRecorded,
        Counter::SynAcksUnsolicited,
        Counter::SynAcksForwarded,
    ] {
        assert_eq!(check.counter(counter), 0, "{counter:?}");
    }
}

/// On a gateway an egress SYN-ACK may have come in by another interface. Where an ingress
/// classifier judged it, it is not sampled again, nor (where the handshake tracker judged what
/// came in) is a SYN with data reported again; from an interface without one it is sampled as
/// it leaves, as with the check off. This host's own still are.
#[test]
fn forwarded_synacks_are_not_sampled_again_on_egress() {
    let mut check = Check::load(SEED);
    let leaving = segment((PEER, HOST), SYN | ACK, 5000, 1001);
    let forwarded = |check: &mut Check, frame: &[u8]| {
        check.run("synack_egress", frame, &context(CAME_IN_BY, LOOPBACK))
    };
    assert_eq!(forwarded(&mut check, &leaving), answer(HOST, 5000, 1001));
    let with_data = segment_with_data((PEER, HOST), SYN, 1000, 0, b"data");
    let reported = Outcome::reported(AnomalyKind::SynWithData);
    assert_eq!(forwarded(&mut check, &with_data), reported);

    check.judge_at_ingress(CAME_IN_BY, JUDGES_SYNACKS);
    assert_eq!(forwarded(&mut check, &leaving), Outcome::nothing());
    assert_eq!(check.counter(Counter::SynAcksForwarded), 1);
    assert_eq!(forwarded(&mut check, &with_data), reported);
    check.judge_at_ingress(CAME_IN_BY, JUDGES_SYNACKS | JUDGES_SEGMENTS);
    assert_eq!(forwarded(&mut check, &with_data), Outcome::nothing());
    assert_eq!(check.leaving(&leaving), answer(HOST, 5000, 1001));
}

/// The ingress classifier of another namespace's veth (`--netns all`) samples the SYN-ACKs
/// answering a SYN that left by it, refuses the others, and judges nothing else.
#[test]
fn another_namespaces_veth_samples_only_answers_to_the_syns_that_left_by_it() {
    let mut check = Check::load(SEED);
    let from_netns = |check: &mut Check, frame: &[u8]| {
        check.run("synack_from_netns", frame, &context(0, LOOPBACK))
    };
    check.leaving(&syn(HOST, 1000));
    let answered = from_netns(&mut check, &synack(HOST, 5000, 1001));
    assert_eq!(answered, answer(HOST, 5000, 1001));
    let unsolicited = from_netns(&mut check, &synack(HOST, 9000, 4242));
    assert_eq!(
        unsolicited,
        Outcome::reported(AnomalyKind::UnsolicitedSynAck)
    );
    let with_data = segment_with_data((PEER, HOST), SYN, 1000, 0, b"data");
    assert_eq!(from_netns(&mut check, &with_data), Outcome::nothing());
    assert_eq!(check.counter(Counter::SynAcksUnsolicited), 1);
}

/// A record holds its interface: the answer to a SYN that left by one interface is refused on
/// another. (A run's context may name only an interface of the caller's network namespace:
/// the runs are made from a lab's.)
#[test]
fn a_syn_is_answered_only_on_the_interface_it_left_by() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let mut check = Check::load(SEED);
    lab.run_in(&lab.server_ns, || {
        let veth = nix::net::if_::if_nametoindex(lab.server_if.as_str()).unwrap();
        let on_veth = context(0, veth);
        assert_eq!(
            check.run("synack_egress", &syn(HOST, 1000), &on_veth),
            Outcome::nothing()
        );
        assert_eq!(
            check.arriving(&synack(HOST, 5000, 1001)),
            Outcome::reported(AnomalyKind::UnsolicitedSynAck),
            "on loopback"
        );
        assert_eq!(
            check.run("synack_ingress", &synack(HOST, 5000, 1001), &on_veth),
            answer(HOST, 5000, 1001)
        );
    });
}

/// The record slot of this host's `host` end talking to the peer, on loopback.
fn slot(host: Endpoint) -> u32 {
    let mut words = [0u32; RECORD_KEY_WORDS];
    words[0] = u32::from_ne_bytes(host.0);
    words[4] = u32::from_ne_bytes(PEER.0);
    words[8] = (u32::from(host.1) << 16) | u32::from(PEER.1);
    words[9] = 4;
    words[10] = LOOPBACK;
    slot_of(jhash(&words, SEED))
}

/// Two of this host's connections whose records share a slot: the newer SYN displaces the
/// older record, whose answer then misses (refused, counted); the newer one's record never
/// answers the older one's ack, and its own answer is sampled.
#[test]
fn a_syn_taking_another_ones_slot_makes_its_answer_miss_never_a_forgery_match() {
    let mut check = Check::load(SEED);
    let older = HOST;
    let newer = (1..=254u8)
        .flat_map(|last| (1024..=u16::MAX).map(move |port| ([198, 51, 100, last], port)))
        .find(|&host| host != older && slot(host) == slot(older))
        .expect("about 125 of these 16 million ends share any one of 131 072 slots");
    check.leaving(&syn(older, 1000));
    check.leaving(&syn(newer, 2000));
    let unsolicited = || Outcome::reported(AnomalyKind::UnsolicitedSynAck);
    assert_eq!(
        check.arriving(&synack(older, 5000, 1001)),
        unsolicited(),
        "the older SYN's answer misses"
    );
    assert_eq!(
        check.arriving(&synack(newer, 5000, 1001)),
        unsolicited(),
        "the older ack on the newer 4-tuple"
    );
    assert_eq!(
        check.arriving(&synack(older, 5000, 2001)),
        unsolicited(),
        "the newer ack on the older 4-tuple"
    );
    assert_eq!(
        check.arriving(&synack(newer, 7000, 2001)),
        answer(newer, 7000, 2001)
    );
    assert_eq!(check.counter(Counter::SynAcksUnsolicited), 3);
}
