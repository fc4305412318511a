//! Captures are written here byte by byte (writing is tiny); reading goes through pcap-parser.

use std::net::{IpAddr, SocketAddr};

use etherparse::LinuxSllPacketType;
use etherparse::{PacketBuilder, VlanId};
use pcap_parser::Linktype;

use super::capture::{self, read_frames};
use super::*;

const STEP: u32 = 64_000;

#[derive(Clone, Copy)]
enum Encapsulation {
    Ethernet,
    Vlan,
    LinuxSll,
    LinuxSll2,
    RawIp,
}

impl Encapsulation {
    fn linktype(self) -> Linktype {
        match self {
            Encapsulation::Ethernet | Encapsulation::Vlan => Linktype::ETHERNET,
            Encapsulation::LinuxSll => Linktype::LINUX_SLL,
            Encapsulation::LinuxSll2 => Linktype::LINUX_SLL2,
            Encapsulation::RawIp => Linktype::RAW,
        }
    }
}

/// A TCP segment from `from` to `to` with SYN set, and ACK when `ack` is given.
fn segment(
    encapsulation: Encapsulation,
    from: SocketAddr,
    to: SocketAddr,
    seq: u32,
    ack: Option<u32>,
) -> Vec<u8> {
    let mac = [2, 0, 0, 0, 0, 1];
    let mut out = Vec::new();
    // `$($prefix)*` is the builder up to the IP layer, e.g. `PacketBuilder::` for raw IP.
    macro_rules! build {
        ($($prefix:tt)*) => {{
            macro_rules! finish {
                ($ip:expr) => {{
                    let tcp = $ip.tcp(from.port(), to.port(), seq, 65_535).syn();
                    match ack {
                        Some(ack) => tcp.ack(ack).write_to_vec(&mut out, &[]).unwrap(),
                        None => tcp.write_to_vec(&mut out, &[]).unwrap(),
                    }
                }};
            }
            match (from.ip(), to.ip()) {
                (IpAddr::V4(a), IpAddr::V4(b)) => finish!($($prefix)* ipv4(a.octets(), b.octets(), 64)),
                (IpAddr::V6(a), IpAddr::V6(b)) => finish!($($prefix)* ipv6(a.octets(), b.octets(), 64)),
                _ => unreachable!("mixed address families"),
            }
        }};
    }
    match encapsulation {
        Encapsulation::Ethernet => build!(PacketBuilder::ethernet2(mac, mac).),
        Encapsulation::Vlan => {
            build!(PacketBuilder::ethernet2(mac, mac).single_vlan(VlanId::try_new(42).unwrap()).)
        }
        Encapsulation::LinuxSll => {
            build!(PacketBuilder::linux_sll(LinuxSllPacketType::OUTGOING, 6, [2, 0, 0, 0, 0, 1, 0, 0]).)
        }
        Encapsulation::LinuxSll2 => {
            // SLL2: protocol, reserved, ifindex, ARPHRD, packet type, address length, address.
            let protocol: u16 = if from.is_ipv4() { 0x0800 } else { 0x86dd };
            out.extend_from_slice(&protocol.to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 1, 4, 6, 2, 0, 0, 0, 0, 1, 0, 0]);
            build!(PacketBuilder::)
        }
        Encapsulation::RawIp => build!(PacketBuilder::),
    }
    out
}

/// A legacy pcap file (microsecond timestamps, little-endian).
fn pcap(linktype: Linktype, frames: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    for word in [0u32, 0, 65_535, linktype.0 as u32] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    for (ts_ns, data) in frames {
        let (sec, usec) = (
            (ts_ns / 1_000_000_000) as u32,
            (ts_ns % 1_000_000_000 / 1000) as u32,
        );
        for word in [sec, usec, data.len() as u32, data.len() as u32] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(data);
    }
    out
}

/// A pcapng file being written: one section in either byte order.
struct Pcapng {
    big_endian: bool,
    out: Vec<u8>,
}

/// `if_tsresol` and `if_tsoffset`, the pcapng option codes.
const IF_TSRESOL: u16 = 9;
const IF_TSOFFSET: u16 = 14;

impl Pcapng {
    fn new(big_endian: bool) -> Self {
        let mut file = Pcapng {
            big_endian,
            out: Vec::new(),
        };
        let mut shb = file.u32(0x1a2b_3c4d).to_vec();
        shb.extend_from_slice(&file.u16(1));
        shb.extend_from_slice(&file.u16(0));
        shb.extend_from_slice(&[0xff; 8]);
        file.block(0x0a0d_0d0a, &shb);
        file
    }

    fn u16(&self, value: u16) -> [u8; 2] {
        if self.big_endian {
            value.to_be_bytes()
        } else {
            value.to_le_bytes()
        }
    }

    fn u32(&self, value: u32) -> [u8; 4] {
        if self.big_endian {
            value.to_be_bytes()
        } else {
            value.to_le_bytes()
        }
    }

    /// Appends a block and returns its offset.
    fn block(&mut self, block_type: u32, body: &[u8]) -> usize {
        let offset = self.out.len();
        let total = (12 + body.len().div_ceil(4) * 4) as u32;
        self.out.extend_from_slice(&self.u32(block_type));
        self.out.extend_from_slice(&self.u32(total));
        self.out.extend_from_slice(body);
        self.out.resize(offset + total as usize - 4, 0);
        self.out.extend_from_slice(&self.u32(total));
        offset
    }

    /// An interface description with these options (code, value), then opt_endofopt.
    fn interface(&mut self, linktype: Linktype, options: &[(u16, &[u8])]) -> usize {
        let mut idb = self.u16(linktype.0 as u16).to_vec();
        idb.extend_from_slice(&self.u16(0));
        idb.extend_from_slice(&self.u32(65_535));
        for (code, value) in options {
            idb.extend_from_slice(&self.u16(*code));
            idb.extend_from_slice(&self.u16(value.len() as u16));
            idb.extend_from_slice(value);
            idb.resize(idb.len().div_ceil(4) * 4, 0);
        }
        idb.extend_from_slice(&[0; 4]);
        self.block(1, &idb)
    }

    /// An enhanced packet block; the timestamp is in the interface's units.
    fn packet(&mut self, interface: u32, units: u64, data: &[u8]) -> usize {
        let mut epb = Vec::new();
        for word in [
            interface,
            (units >> 32) as u32,
            units as u32,
            data.len() as u32,
            data.len() as u32,
        ] {
            epb.extend_from_slice(&self.u32(word));
        }
        epb.extend_from_slice(data);
        self.block(6, &epb)
    }
}

/// A pcapng file with one interface at nanosecond resolution (`if_tsresol` = 9).
fn pcapng(linktype: Linktype, frames: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut file = Pcapng::new(false);
    file.interface(linktype, &[(IF_TSRESOL, &[9])]);
    for (ts_ns, data) in frames {
        file.packet(0, *ts_ns, data);
    }
    file.out
}

/// Offsets of the blocks of a little-endian pcapng file, in order.
fn block_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        offsets.push(offset);
        offset += u32::from_le_bytes(bytes[offset + 4..offset + 8].try_into().unwrap()) as usize;
    }
    offsets
}

const SERVER_V4: &str = "192.0.2.10:443";
const SERVER_V6: &str = "[2001:db8::10]:8443";

/// `count` connections to `server`, each a client SYN followed by the server's SYN-ACK, whose
/// ISNs advance by 64000 per connection.
fn counter_traffic(encapsulation: Encapsulation, server: &str, count: u32) -> Vec<(u64, Vec<u8>)> {
    let server: SocketAddr = server.parse().unwrap();
    let mut frames = Vec::new();
    for i in 0..count {
        let client_ip: IpAddr = if server.is_ipv4() {
            "198.51.100.5".parse().unwrap()
        } else {
            "2001:db8::5".parse().unwrap()
        };
        let client = SocketAddr::new(client_ip, 40_000 + i as u16);
        let client_isn = 1_000 + i * 7919;
        let ts_ns = 1_700_000_000_000_000_000 + u64::from(i) * 250_000_000;
        frames.push((
            ts_ns,
            segment(encapsulation, client, server, client_isn, None),
        ));
        frames.push((
            ts_ns + 50_000,
            segment(
                encapsulation,
                server,
                client,
                5 + i * STEP,
                Some(client_isn + 1),
            ),
        ));
    }
    frames
}

fn analyze(bytes: &[u8]) -> (Vec<ServiceReport>, Result<Capture, CaptureError>) {
    let mut analysis = Analysis::new(ScorerConfig::default(), settings::MAX_SERVICES.default);
    let result = analysis.add_capture(bytes);
    (analysis.reports(), result)
}

#[test]
fn every_link_type_and_family_is_read_from_pcap_and_pcapng() {
    let encapsulations = [
        Encapsulation::Ethernet,
        Encapsulation::Vlan,
        Encapsulation::LinuxSll,
        Encapsulation::LinuxSll2,
        Encapsulation::RawIp,
    ];
    for encapsulation in encapsulations {
        for server in [SERVER_V4, SERVER_V6] {
            let frames = counter_traffic(encapsulation, server, 10);
            for (format, bytes) in [
                ("pcap", pcap(encapsulation.linktype(), &frames)),
                ("pcapng", pcapng(encapsulation.linktype(), &frames)),
            ] {
                let (reports, result) = analyze(&bytes);
                assert_eq!(result.unwrap().frames, 20, "{format} {server}");
                assert_eq!(
                    reports.len(),
                    1,
                    "{format} {server}: only the server is a service"
                );
                let report = &reports[0];
                assert_eq!(report.service, server);
                assert_eq!(report.samples, 10);
                assert_eq!(report.verdict, Verdict::Weak);
                assert_eq!(report.nmap.as_ref().unwrap().gcd, STEP);
            }
        }
    }
}

#[test]
fn timestamps_are_nanoseconds_in_both_formats() {
    let frames = counter_traffic(Encapsulation::Ethernet, SERVER_V4, 2);
    for bytes in [
        pcap(Linktype::ETHERNET, &frames),
        pcapng(Linktype::ETHERNET, &frames),
    ] {
        let mut seen = Vec::new();
        read_frames(&bytes[..], |frame| seen.push(frame.ts_ns)).unwrap();
        let expected: Vec<u64> = frames.iter().map(|(ts, _)| *ts).collect();
        assert_eq!(seen, expected);
    }
}

#[test]
fn truncated_file_names_the_offset_and_keeps_earlier_results() {
    let frames = counter_traffic(Encapsulation::Ethernet, SERVER_V4, 10);
    let bytes = pcap(Linktype::ETHERNET, &frames);
    // Offset of the 16th record (the 8th SYN-ACK's SYN): 24-byte header, then 16 + data each.
    let record_start: usize = 24
        + frames[..15]
            .iter()
            .map(|(_, d)| 16 + d.len())
            .sum::<usize>();
    let cut = &bytes[..record_start + 16 + 10];
    let (reports, result) = analyze(cut);
    let error = result.unwrap_err();
    assert_eq!(error.offset, record_start as u64);
    assert!(error.to_string().contains("truncated"), "{error}");
    assert!(
        error
            .to_string()
            .contains(&format!("byte offset {record_start}"))
    );
    assert_eq!(reports[0].samples, 7, "SYN-ACKs before the cut are kept");
}

/// The raw-IP pcapng of 10 connections to `SERVER_V6` and its block offsets: the section
/// header, the interface, then 20 packets (SYN, SYN-ACK, …).
fn ten_connections() -> (Vec<u8>, Vec<usize>) {
    let frames = counter_traffic(Encapsulation::RawIp, SERVER_V6, 10);
    let bytes = pcapng(Linktype::RAW, &frames);
    let blocks = block_offsets(&bytes);
    (bytes, blocks)
}

fn set_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

#[test]
fn a_trailing_length_mismatch_skips_that_block_and_reads_on() {
    let (mut bytes, blocks) = ten_connections();
    // The 12th packet (the 6th SYN-ACK): its trailing length is wrong, the next block is sound.
    let bad = blocks[2 + 11];
    let length = blocks[2 + 12] - bad;
    set_u32(&mut bytes, bad + length - 4, 7);
    let (reports, result) = analyze(&bytes);
    let capture = result.unwrap();
    assert_eq!(capture.frames, 19);
    assert_eq!(capture.skipped.blocks, 1);
    let skipped = &capture.skipped.described[0];
    assert_eq!(skipped.offset, bad as u64);
    assert_eq!(
        skipped.to_string(),
        format!(
            "at byte offset {bad}: enhanced packet block (type 0x00000006, {length} bytes): \
             its trailing length 7 differs from its leading length; skipped"
        )
    );
    assert_eq!(reports[0].samples, 9, "every SYN-ACK but the skipped one");
}

#[test]
fn broken_framing_stops_with_offset_and_block_type_and_keeps_earlier_results() {
    let (mut bytes, blocks) = ten_connections();
    let bad = blocks[2 + 11];
    // A leading length that lands inside the next block: nothing plausible starts there.
    set_u32(&mut bytes, bad + 4, 48);
    set_u32(&mut bytes, bad + 44, 48);
    let skewed = bytes.clone();
    set_u32(&mut bytes, bad + 44, 0xdead_beef);
    let (reports, result) = analyze(&bytes);
    let error = result.unwrap_err();
    assert_eq!(error.offset, bad as u64, "{error}");
    assert_eq!(
        error.to_string(),
        format!(
            "at byte offset {bad}: enhanced packet block (type 0x00000006, 48 bytes): its trailing \
             length 3735928559 differs from its leading length, and no block starts where it \
             should end"
        )
    );
    assert_eq!(reports[0].samples, 5);
    // The same block with both lengths agreeing is only damaged content: skipped.
    let (reports, result) = analyze(&skewed);
    let result = result.unwrap_err();
    assert_eq!(result.skipped.blocks, 1, "{result}");
    assert_eq!(reports[0].samples, 5);
    // A length that is no block length at all stops at once.
    set_u32(&mut bytes, bad + 4, 7);
    let error = analyze(&bytes).1.unwrap_err();
    assert!(
        error
            .to_string()
            .ends_with("enhanced packet block (type 0x00000006, 7 bytes): not a block length (12 or more, a multiple of 4)"),
        "{error}"
    );
}

#[test]
fn a_bad_name_resolution_block_is_skipped_and_the_packets_after_it_read() {
    let frames = counter_traffic(Encapsulation::Ethernet, SERVER_V4, 10);
    let mut file = Pcapng::new(false);
    file.interface(Linktype::ETHERNET, &[(IF_TSRESOL, &[9])]);
    let mut nrb_offset = 0;
    for (i, (ts_ns, data)) in frames.iter().enumerate() {
        if i == 6 {
            // An IPv4 record claiming 200 bytes in a 24-byte block body, and no end record.
            let mut nrb = Vec::new();
            nrb.extend_from_slice(&1u16.to_le_bytes());
            nrb.extend_from_slice(&200u16.to_le_bytes());
            nrb.extend_from_slice(&[192, 0, 2, 10]);
            nrb.extend_from_slice(b"server.example\0\0");
            nrb_offset = file.block(4, &nrb);
        }
        file.packet(0, *ts_ns, data);
    }
    let (reports, result) = analyze(&file.out);
    let capture = result.unwrap();
    assert_eq!(
        capture.frames, 20,
        "every packet, those after the bad block too"
    );
    assert_eq!(
        capture.skipped.described,
        [capture::SkippedBlock {
            offset: nrb_offset as u64,
            block: "name resolution block (type 0x00000004, 36 bytes)".to_owned(),
            reason: "its content runs past its end".to_owned(),
        }]
    );
    assert_eq!(reports[0].samples, 10);
}

#[test]
fn binary_and_decimal_if_tsresol_and_tsoffset_in_either_byte_order() {
    let data = &counter_traffic(Encapsulation::Ethernet, SERVER_V4, 1)[1].1;
    for big_endian in [false, true] {
        let mut file = Pcapng::new(big_endian);
        let offset = if big_endian {
            100i64.to_be_bytes()
        } else {
            100i64.to_le_bytes()
        };
        // 2^-20 s units (binary), 10^-3 s units with a 100 s offset, and the default (µs).
        file.interface(Linktype::ETHERNET, &[(IF_TSRESOL, &[0x80 | 20])]);
        file.interface(
            Linktype::ETHERNET,
            &[(IF_TSRESOL, &[3]), (IF_TSOFFSET, &offset)],
        );
        file.interface(Linktype::ETHERNET, &[]);
        file.packet(0, 3 << 20 | 1 << 19, data);
        file.packet(1, 2500, data);
        file.packet(2, 7_000_001, data);
        let mut seen = Vec::new();
        let capture = read_frames(&file.out[..], |frame| seen.push(frame.ts_ns)).unwrap();
        assert_eq!(capture.frames, 3);
        assert_eq!(
            seen,
            [3_500_000_000, 102_500_000_000, 7_000_001_000],
            "big-endian: {big_endian}"
        );
    }
}

#[test]
fn a_damaged_interface_description_skips_its_packets_only() {
    let frames = counter_traffic(Encapsulation::Ethernet, SERVER_V4, 10);
    let mut file = Pcapng::new(false);
    // 2^-64 s units do not fit a u64 clock: this description is skipped, its number kept.
    file.interface(Linktype::ETHERNET, &[(IF_TSRESOL, &[0x80 | 64])]);
    file.interface(Linktype::ETHERNET, &[(IF_TSRESOL, &[9])]);
    for (ts_ns, data) in &frames {
        file.packet(1, *ts_ns, data);
    }
    file.packet(0, 0, &frames[1].1);
    let (reports, result) = analyze(&file.out);
    let capture = result.unwrap();
    assert_eq!(capture.skipped.blocks, 1);
    assert!(
        capture.skipped.described[0]
            .reason
            .contains("if_tsresol 0xc0 is finer than"),
        "{:?}",
        capture.skipped
    );
    assert_eq!(capture.skipped.packets, 1);
    assert_eq!((capture.frames, reports[0].samples), (20, 10));
}

#[test]
fn a_block_over_the_limit_is_passed_over_unread() {
    let (bytes, blocks) = ten_connections();
    let mut file = bytes[..blocks[2 + 4]].to_vec();
    let huge = capture::MAX_BLOCK as usize + 4096;
    file.extend_from_slice(&6u32.to_le_bytes());
    file.extend_from_slice(&(huge as u32).to_le_bytes());
    file.resize(file.len() + huge - 12, 0);
    file.extend_from_slice(&(huge as u32).to_le_bytes());
    file.extend_from_slice(&bytes[blocks[2 + 4]..]);
    let (reports, result) = analyze(&file);
    let capture = result.unwrap();
    assert_eq!(capture.frames, 20);
    assert_eq!(capture.skipped.blocks, 1);
    assert_eq!(
        capture.skipped.described[0].reason,
        format!(
            "over the {}-byte limit of one block, not read",
            capture::MAX_BLOCK
        )
    );
    assert_eq!(reports[0].samples, 10);
}

#[test]
fn only_the_first_skipped_blocks_are_described() {
    let (bytes, blocks) = ten_connections();
    let mut bytes = bytes;
    for packet in 0..20 {
        let at = blocks[2 + packet];
        let length = blocks.get(3 + packet).unwrap_or(&bytes.len()) - at;
        set_u32(&mut bytes, at + length - 4, 4);
    }
    let capture = analyze(&bytes).1.unwrap();
    assert_eq!(capture.frames, 0);
    assert_eq!(capture.skipped.blocks, 20);
    assert_eq!(capture.skipped.described.len(), capture::SKIPS_DESCRIBED);
}

#[test]
fn servers_beyond_the_cap_are_counted_not_scored() {
    let mut frames = Vec::new();
    for server in 0..6u32 {
        let address = format!("192.0.2.{}:443", server + 1);
        frames.extend(counter_traffic(Encapsulation::RawIp, &address, 3));
    }
    let mut analysis = Analysis::new(ScorerConfig::default(), 4);
    analysis
        .add_capture(&pcap(Linktype::RAW, &frames)[..])
        .unwrap();
    assert_eq!(analysis.reports().len(), 4);
    assert_eq!(
        analysis.unscored().as_deref(),
        Some("2 servers beyond the cap of 4 (--max-services) were not scored (6 SYN-ACKs)")
    );
    let mut analysis = Analysis::new(ScorerConfig::default(), 6);
    analysis
        .add_capture(&pcap(Linktype::RAW, &frames)[..])
        .unwrap();
    assert_eq!((analysis.reports().len(), analysis.unscored()), (6, None));
}

#[test]
fn a_pcap_record_over_the_limit_stops_reading_there() {
    let frames = counter_traffic(Encapsulation::Ethernet, SERVER_V4, 10);
    let mut bytes = pcap(Linktype::ETHERNET, &frames);
    // The 7th record (the 4th SYN): its captured length is far past anything a packet takes.
    let record = 24 + frames[..6].iter().map(|(_, d)| 16 + d.len()).sum::<usize>();
    let claimed = capture::MAX_BLOCK + 1;
    bytes[record + 8..record + 12].copy_from_slice(&claimed.to_le_bytes());
    let (reports, result) = analyze(&bytes);
    assert_eq!(
        result.unwrap_err().to_string(),
        format!(
            "at byte offset {record}: packet record: captured length {claimed} is over the {}-byte \
             limit (a damaged record header; pcap has no framing to resume after it)",
            capture::MAX_BLOCK
        )
    );
    assert_eq!(reports[0].samples, 3);
}

#[test]
fn not_a_capture_is_an_error_at_offset_zero() {
    let (reports, result) = analyze(b"this is not a capture file at all, just text");
    assert_eq!(result.unwrap_err().offset, 0);
    assert!(reports.is_empty());
}

#[test]
fn table_lists_each_service_and_its_reasons() {
    let frames = counter_traffic(Encapsulation::Ethernet, SERVER_V4, 10);
    let (reports, _) = analyze(&pcap(Linktype::ETHERNET, &frames));
    let mut out = Vec::new();
    write_table(&mut out, &reports).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains(SERVER_V4) && text.contains("weak"), "{text}");
    assert!(text.contains("multiples of 64000"), "{text}");
}

/// Issue 22 as a user met it: a capture of 200 SYN-ACKs from `java.util.Random` read as strong,
/// 31.8 guess bits. Now the JSON names the generator and says the next ISN is known.
#[test]
fn a_capture_of_a_prng_service_names_the_generator() {
    use crate::lab::{FourTuple, GeneratorKind, PrngPreset};
    let server: SocketAddr = SERVER_V4.parse().unwrap();
    for (preset, family) in [
        (PrngPreset::JavaRandom, "truncated_lcg"),
        (PrngPreset::MsvcRand, "truncated_lcg"),
        (PrngPreset::Lcg, "lcg"),
    ] {
        let mut generator = GeneratorKind::Prng(preset).build(22);
        let mut frames = Vec::new();
        for i in 0..200u32 {
            let client = SocketAddr::new("198.51.100.5".parse().unwrap(), 20_000 + i as u16);
            let ts_ns = 1_700_000_000_000_000_000 + u64::from(i) * 130_000_000;
            let four_tuple = FourTuple {
                saddr: server.ip(),
                sport: server.port(),
                daddr: client.ip(),
                dport: client.port(),
            };
            let isn = generator.next_isn(&four_tuple, ts_ns);
            let synack = segment(Encapsulation::Ethernet, server, client, isn, Some(i + 1));
            frames.push((ts_ns, synack));
        }
        let (reports, result) = analyze(&pcap(Linktype::ETHERNET, &frames));
        assert_eq!(result.unwrap().frames, 200);
        let json = serde_json::to_value(&reports[0]).unwrap();
        assert_eq!(json["verdict"], "weak", "{preset:?}: {json:#}");
        assert_eq!(json["guess_bits"], 0.0, "{preset:?}");
        assert_eq!(json["attack_feasibility"], 1.0, "{preset:?}");
        let prng = json["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["kind"] == "prng")
            .unwrap_or_else(|| panic!("{preset:?}: {json:#}"));
        assert_eq!(prng["generator"]["family"], family, "{preset:?}");
    }
}

/// Captures in every framing the reader knows, for damaging at random.
fn sound_captures() -> Vec<Vec<u8>> {
    let ethernet = counter_traffic(Encapsulation::Ethernet, SERVER_V4, 4);
    let raw = counter_traffic(Encapsulation::RawIp, SERVER_V6, 4);
    let mut captures = vec![
        pcap(Linktype::ETHERNET, &ethernet),
        pcapng(Linktype::RAW, &raw),
    ];
    for big_endian in [false, true] {
        let mut file = Pcapng::new(big_endian);
        file.interface(Linktype::ETHERNET, &[(IF_TSRESOL, &[0x80 | 20])]);
        file.interface(Linktype::RAW, &[(IF_TSRESOL, &[9]), (IF_TSOFFSET, &[1; 8])]);
        let nrb = [1, 0, 4, 0, 192, 0, 2, 10, 0, 0, 0, 0];
        file.block(4, &nrb);
        for ((ts, ethernet), (_, raw)) in ethernet.iter().zip(&raw) {
            file.packet(0, *ts, ethernet);
            file.packet(1, *ts, raw);
        }
        captures.push(file.out);
    }
    captures
}

/// Bounded random damage, on stable and in every test run (the fuzz target goes further):
/// whatever the damage, no panic, and every message is one short line without the input.
#[test]
fn randomly_damaged_captures_never_panic_and_report_in_short_lines() {
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    const INTERESTING: [u32; 8] = [0, 1, 7, 12, 0x8000_0000, u32::MAX, u32::MAX - 3, 1 << 24];
    let mut rng = StdRng::seed_from_u64(23);
    let captures = sound_captures();
    let short_line = |message: String| {
        assert!(!message.contains('\n') && message.len() < 300, "{message}");
    };
    for _ in 0..20_000 {
        let mut bytes = captures[rng.random_range(0..captures.len())].clone();
        for _ in 0..rng.random_range(1..=4) {
            let at = rng.random_range(0..bytes.len());
            match rng.random_range(0..5) {
                0 => bytes[at] = rng.random(),
                1 => {
                    let at = at & !3;
                    let value = INTERESTING[rng.random_range(0..INTERESTING.len())];
                    let end = (at + 4).min(bytes.len());
                    bytes[at..end].copy_from_slice(&value.to_le_bytes()[..end - at]);
                }
                2 => bytes.truncate(at),
                3 => {
                    let end = rng.random_range(at..=bytes.len());
                    bytes.drain(at..end);
                }
                _ => {
                    let end = rng.random_range(at..=bytes.len().min(at + 64));
                    let copy = bytes[at..end].to_vec();
                    bytes.splice(at..at, copy);
                }
            }
            if bytes.is_empty() {
                break;
            }
        }
        let mut frames = 0;
        let skipped = match read_frames(&bytes[..], |_| frames += 1) {
            Ok(capture) => {
                assert_eq!(capture.frames, frames);
                capture.skipped
            }
            Err(error) => {
                short_line(error.to_string());
                error.skipped
            }
        };
        assert!(skipped.described.len() <= capture::SKIPS_DESCRIBED);
        skipped
            .described
            .into_iter()
            .for_each(|block| short_line(block.to_string()));
    }
}
