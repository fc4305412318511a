//! The classifier's parser in the real kernel, on crafted frames (BPF_PROG_TEST_RUN): every
//! supported encapsulation yields the right record, and hostile frames are counted under the
//! right reason, yield no record, and pass through unchanged. Needs root.

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
};
use common::test_run::{counter_total, load_classifiers, run_unchanged, run_unchanged_times};
use etherparse::{PacketBuilder, PacketBuilderStep, TcpHeader, TcpOptionElement, VlanId};
use seqwatch::detectors::isn::{self, sample::Sample};
use seqwatch_common::{
    packet::Counter,
    synack::{self, SynAckRecord},
};

struct Classifier {
    ebpf: Ebpf,
    rings: Vec<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
}

/// What one frame did: the records it produced and the counters it moved.
struct Outcome {
    samples: Vec<Sample>,
    moved: Vec<Counter>,
}

impl Classifier {
    fn load() -> Classifier {
        let mut ebpf = load_classifiers();
        let rings = isn::sample_rings(&mut ebpf).unwrap();
        let counters = PerCpuArray::try_from(ebpf.take_map("PACKET_COUNTERS").unwrap()).unwrap();
        Classifier {
            ebpf,
            rings,
            counters,
        }
    }

    fn counts(&self) -> Vec<u64> {
        (0..Counter::COUNT)
            .map(|i| counter_total(&self.counters, i))
            .collect()
    }

    fn run(&mut self, frame: &[u8]) -> Outcome {
        let before = self.counts();
        run_unchanged(&mut self.ebpf, "synack_egress", frame);
        let after = self.counts();
        let moved = ALL_COUNTERS
            .into_iter()
            .filter(|&c| after[c as usize] != before[c as usize])
            .collect();
        let mut records = Vec::new();
        isn::take_records(&mut self.rings, &mut records);
        let samples = records.iter().map(Sample::from_record).collect();
        Outcome { samples, moved }
    }
}

const ALL_COUNTERS: [Counter; 10] = [
    Counter::PacketsSeen,
    Counter::SynAcks,
    Counter::RingbufDropped,
    Counter::NonFirstFragment,
    Counter::ParseTruncated,
    Counter::ParseIpVersionMismatch,
    Counter::ParseIpv4BadIhl,
    Counter::ParseIpv6ExtTooDeep,
    Counter::ParseVlanTooDeep,
    Counter::ParseTcpBadDataOffset,
];

const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const SERVER_V4: [u8; 4] = [192, 0, 2, 1];
const CLIENT_V4: [u8; 4] = [198, 51, 100, 7];
const SERVER_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const CLIENT_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
/// Ethernet (14) + IPv4 (20): where the TCP header of an untagged IPv4 frame starts.
const TCP_V4: usize = 34;

fn synack(step: PacketBuilderStep<TcpHeader>) -> Vec<u8> {
    let builder = step
        .syn()
        .ack(0x0102_0304)
        .options(&[
            TcpOptionElement::MaximumSegmentSize(1400),
            TcpOptionElement::SelectiveAcknowledgementPermitted,
            TcpOptionElement::Timestamp(0xdead_beef, 9),
            TcpOptionElement::Noop,
            TcpOptionElement::WindowScale(9),
        ])
        .unwrap();
    let mut frame = Vec::new();
    builder.write(&mut frame, &[]).unwrap();
    frame
}

fn ipv4_synack() -> Vec<u8> {
    synack(
        PacketBuilder::ethernet2(SERVER_MAC, CLIENT_MAC)
            .ipv4(SERVER_V4, CLIENT_V4, 61)
            .tcp(443, 51000, 0xa1b2_c3d4, 29200),
    )
}

fn assert_one_ipv4_sample(outcome: &Outcome) {
    assert_eq!(outcome.moved, [Counter::PacketsSeen, Counter::SynAcks]);
    let [sample] = outcome.samples.as_slice() else {
        panic!("one record expected, got {}", outcome.samples.len());
    };
    assert_ipv4_sample(sample);
}

fn assert_ipv4_sample(sample: &Sample) {
    assert_eq!(sample.server, "192.0.2.1:443".parse().unwrap());
    assert_eq!(sample.client, "198.51.100.7:51000".parse().unwrap());
    assert_eq!((sample.seq, sample.ack), (0xa1b2_c3d4, 0x0102_0304));
    assert_eq!((sample.window, sample.ttl), (29200, 61));
    assert_eq!(sample.mss, Some(1400));
    assert_eq!(sample.window_scale, Some(9));
    assert!(sample.sack_permitted);
    assert_eq!(sample.tsval, Some(0xdead_beef));
    assert!(!sample.options_malformed);
    assert_eq!(sample.direction, "egress");
}

#[test]
fn an_ipv4_synack_becomes_one_exact_record() {
    let mut classifier = Classifier::load();
    assert_one_ipv4_sample(&classifier.run(&ipv4_synack()));
}

/// More SYN-ACKs than every CPU's ring buffer holds, and nobody reading: each SYN-ACK is either
/// recorded, exactly, or dropped and counted, and the program still passes every frame on.
#[test]
fn a_full_ring_buffer_drops_and_counts() {
    let mut sampler = Classifier::load();
    let cpus = aya::util::nr_cpus().unwrap().get();
    // A record and the ring's 8-byte header, in 8-byte units.
    let footprint = (size_of::<SynAckRecord>() + 8).div_ceil(8) * 8;
    let per_ring = synack::ring_bytes_per_cpu(cpus) as usize / footprint;
    let repeat = per_ring * cpus as usize + 100;
    let before = sampler.counts();
    let frame = ipv4_synack();
    run_unchanged_times(&mut sampler.ebpf, "synack_egress", &frame, repeat as u32);
    let after = sampler.counts();
    let moved = |counter: Counter| (after[counter as usize] - before[counter as usize]) as usize;
    let mut records = Vec::new();
    isn::take_records(&mut sampler.rings, &mut records);
    assert_eq!(moved(Counter::SynAcks), repeat);
    assert_eq!(records.len() + moved(Counter::RingbufDropped), repeat);
    assert!(
        moved(Counter::RingbufDropped) >= 100,
        "dropped {}",
        moved(Counter::RingbufDropped)
    );
    let expected = records[0];
    assert!(records.iter().all(|record| SynAckRecord {
        ts_ns: expected.ts_ns,
        ..*record
    } == expected));
    assert_ipv4_sample(&Sample::from_record(&expected));
}

#[test]
fn tags_are_walked_single_and_qinq() {
    let mut classifier = Classifier::load();
    let single = synack(
        PacketBuilder::ethernet2(SERVER_MAC, CLIENT_MAC)
            .single_vlan(VlanId::try_new(10).unwrap())
            .ipv4(SERVER_V4, CLIENT_V4, 61)
            .tcp(443, 51000, 0xa1b2_c3d4, 29200),
    );
    assert_one_ipv4_sample(&classifier.run(&single));
    let qinq = synack(
        PacketBuilder::ethernet2(SERVER_MAC, CLIENT_MAC)
            .double_vlan(VlanId::try_new(20).unwrap(), VlanId::try_new(10).unwrap())
            .ipv4(SERVER_V4, CLIENT_V4, 61)
            .tcp(443, 51000, 0xa1b2_c3d4, 29200),
    );
    assert_one_ipv4_sample(&classifier.run(&qinq));
}

#[test]
fn a_third_vlan_tag_is_refused_and_counted() {
    let mut classifier = Classifier::load();
    let good = ipv4_synack();
    let mut frame = good[..12].to_vec();
    for tpid in [[0x88, 0xa8], [0x81, 0x00], [0x81, 0x00]] {
        frame.extend_from_slice(&tpid);
        frame.extend_from_slice(&[0x00, 0x0a]);
    }
    frame.extend_from_slice(&good[12..]);
    let outcome = classifier.run(&frame);
    assert_eq!(
        outcome.moved,
        [Counter::PacketsSeen, Counter::ParseVlanTooDeep]
    );
    assert!(outcome.samples.is_empty());
}

/// IPv6 with hop-by-hop, destination options, routing and a first fragment before TCP.
#[test]
fn ipv6_extension_headers_are_walked() {
    let mut classifier = Classifier::load();
    let plain = synack(
        PacketBuilder::ethernet2(SERVER_MAC, CLIENT_MAC)
            .ipv6(SERVER_V6, CLIENT_V6, 61)
            .tcp(443, 51000, 7, 29200),
    );
    let tcp = plain[54..].to_vec();
    let mut frame = plain[..54].to_vec();
    frame[20] = 0; // next header: hop-by-hop
    let extensions: [&[u8]; 4] = [
        &[60, 0, 1, 4, 0, 0, 0, 0], // hop-by-hop (PadN) → destination options
        &[43, 0, 1, 4, 0, 0, 0, 0], // destination options → routing
        &[44, 0, 4, 0, 0, 0, 0, 0], // routing (type 4, 0 segments left) → fragment
        &[6, 0, 0, 1, 0, 0, 0, 42], // fragment: offset 0, more fragments → TCP
    ];
    for extension in extensions {
        frame.extend_from_slice(extension);
    }
    frame.extend_from_slice(&tcp);
    let payload_len = (frame.len() - 54) as u16;
    frame[18..20].copy_from_slice(&payload_len.to_be_bytes());
    let outcome = classifier.run(&frame);
    assert_eq!(outcome.moved, [Counter::PacketsSeen, Counter::SynAcks]);
    let sample = &outcome.samples[0];
    assert_eq!(sample.server, "[2001:db8::1]:443".parse().unwrap());
    assert_eq!((sample.seq, sample.ttl, sample.mss), (7, 61, Some(1400)));
}

#[test]
fn an_overlong_ipv6_extension_chain_is_counted() {
    let mut classifier = Classifier::load();
    let plain = synack(
        PacketBuilder::ethernet2(SERVER_MAC, CLIENT_MAC)
            .ipv6(SERVER_V6, CLIENT_V6, 61)
            .tcp(443, 51000, 7, 29200),
    );
    let mut frame = plain[..54].to_vec();
    frame[20] = 60;
    for _ in 0..9 {
        frame.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]);
    }
    frame.extend_from_slice(&plain[54..]);
    let outcome = classifier.run(&frame);
    assert_eq!(
        outcome.moved,
        [Counter::PacketsSeen, Counter::ParseIpv6ExtTooDeep]
    );
    assert!(outcome.samples.is_empty());
}

/// Hostile or broken frames: each counted once under its reason, none recorded.
#[test]
fn malformed_frames_are_counted_by_reason() {
    let mut classifier = Classifier::load();
    let good = ipv4_synack();
    let tagged = synack(
        PacketBuilder::ethernet2(SERVER_MAC, CLIENT_MAC)
            .single_vlan(VlanId::try_new(10).unwrap())
            .ipv4(SERVER_V4, CLIENT_V4, 61)
            .tcp(443, 51000, 0xa1b2_c3d4, 29200),
    );
    let with = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut frame = good.clone();
        edit(&mut frame);
        frame
    };
    let cases: Vec<(&str, Vec<u8>, Counter)> = vec![
        (
            "cut inside the TCP header",
            good[..TCP_V4 + 10].to_vec(),
            Counter::ParseTruncated,
        ),
        (
            "tagged, cut inside the TCP header",
            tagged[..TCP_V4 + 4 + 8].to_vec(),
            Counter::ParseTruncated,
        ),
        (
            "options promised but cut off",
            good[..TCP_V4 + 24].to_vec(),
            Counter::ParseTruncated,
        ),
        (
            "IHL of 4 words",
            with(&|f| f[14] = 0x44),
            Counter::ParseIpv4BadIhl,
        ),
        (
            "version 6 in an IPv4 frame",
            with(&|f| f[14] = 0x65),
            Counter::ParseIpVersionMismatch,
        ),
        (
            "TCP data offset of 4 words",
            with(&|f| f[TCP_V4 + 12] = 0x40),
            Counter::ParseTcpBadDataOffset,
        ),
        (
            "IPv4 fragment at offset 1480",
            with(&|f| f[20..22].copy_from_slice(&[0x00, 0xb9])),
            Counter::NonFirstFragment,
        ),
    ];
    for (what, frame, reason) in cases {
        let outcome = classifier.run(&frame);
        assert_eq!(outcome.moved, [Counter::PacketsSeen, reason], "{what}");
        assert!(outcome.samples.is_empty(), "{what}");
    }
}

/// A SYN-ACK whose option list lies about a length is still sampled (its ISN is real); the
/// summary keeps what came before the fault and says the list was malformed.
#[test]
fn malformed_options_are_flagged_not_trusted() {
    let mut classifier = Classifier::load();
    let mut frame = ipv4_synack();
    frame[TCP_V4 + 20 + 5] = 0; // the second option (SACK-permitted) claims length 0
    let outcome = classifier.run(&frame);
    let sample = &outcome.samples[0];
    assert!(sample.options_malformed);
    assert_eq!(
        sample.mss,
        Some(1400),
        "the option before the fault is kept"
    );
    assert_eq!(sample.tsval, None, "nothing after the fault is trusted");
}

#[test]
fn only_synacks_are_recorded() {
    let mut classifier = Classifier::load();
    let base = || {
        PacketBuilder::ethernet2(SERVER_MAC, CLIENT_MAC)
            .ipv4(SERVER_V4, CLIENT_V4, 64)
            .tcp(443, 51000, 1, 100)
    };
    let mut frames = Vec::new();
    for builder in [
        base().syn(),
        base().ack(5),
        base().syn().ack(5).rst(),
        base().syn().ack(5).fin(),
    ] {
        let mut frame = Vec::new();
        builder.write(&mut frame, &[]).unwrap();
        frames.push(frame);
    }
    let mut udp = Vec::new();
    PacketBuilder::ethernet2(SERVER_MAC, CLIENT_MAC)
        .ipv4(SERVER_V4, CLIENT_V4, 64)
        .udp(53, 53)
        .write(&mut udp, &[0; 8])
        .unwrap();
    frames.push(udp);
    frames.push(vec![0xff; 42]); // not IP at all (ethertype 0xffff)
    for frame in frames {
        let outcome = classifier.run(&frame);
        assert_eq!(outcome.moved, [Counter::PacketsSeen]);
        assert!(outcome.samples.is_empty());
    }
}
