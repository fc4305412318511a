//! Captures are written here byte by byte (writing is tiny); reading goes through pcap-parser.

use std::net::{IpAddr, SocketAddr};

use etherparse::LinuxSllPacketType;
use etherparse::{PacketBuilder, VlanId};
use pcap_parser::Linktype;

use super::capture::read_frames;
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

fn pcapng_block(block_type: u32, body: &[u8]) -> Vec<u8> {
    let padded = body.len().div_ceil(4) * 4;
    let total = (12 + padded) as u32;
    let mut out = Vec::new();
    out.extend_from_slice(&block_type.to_le_bytes());
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(body);
    out.resize(8 + padded, 0);
    out.extend_from_slice(&total.to_le_bytes());
    out
}

/// A pcapng file with one interface at nanosecond resolution (`if_tsresol` = 9).
fn pcapng(linktype: Linktype, frames: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut shb = Vec::new();
    shb.extend_from_slice(&0x1a2b_3c4du32.to_le_bytes());
    shb.extend_from_slice(&1u16.to_le_bytes());
    shb.extend_from_slice(&0u16.to_le_bytes());
    shb.extend_from_slice(&(-1i64).to_le_bytes());
    let mut out = pcapng_block(0x0a0d_0d0a, &shb);
    let mut idb = Vec::new();
    idb.extend_from_slice(&(linktype.0 as u16).to_le_bytes());
    idb.extend_from_slice(&0u16.to_le_bytes());
    idb.extend_from_slice(&65_535u32.to_le_bytes());
    // Option 9 (if_tsresol), length 1, value 9, padding; then opt_endofopt.
    idb.extend_from_slice(&[9, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
    out.extend(pcapng_block(1, &idb));
    for (ts_ns, data) in frames {
        let mut epb = Vec::new();
        for word in [
            0u32,
            (ts_ns >> 32) as u32,
            *ts_ns as u32,
            data.len() as u32,
            data.len() as u32,
        ] {
            epb.extend_from_slice(&word.to_le_bytes());
        }
        epb.extend_from_slice(data);
        out.extend(pcapng_block(6, &epb));
    }
    out
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

fn analyze(bytes: &[u8]) -> (Vec<ServiceReport>, Result<u64, CaptureError>) {
    let mut analysis = Analysis::new(ScorerConfig::default());
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
                assert_eq!(result, Ok(20), "{format} {server}");
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

#[test]
fn corrupt_block_names_the_offset_and_keeps_earlier_results() {
    let frames = counter_traffic(Encapsulation::RawIp, SERVER_V6, 10);
    let mut bytes = pcapng(Linktype::RAW, &frames);
    // Find the 12th enhanced packet block and break its trailing length.
    let mut offset = 0;
    let mut blocks = Vec::new();
    while offset < bytes.len() {
        blocks.push(offset);
        offset += u32::from_le_bytes(bytes[offset + 4..offset + 8].try_into().unwrap()) as usize;
    }
    let bad = blocks[2 + 11];
    let length = u32::from_le_bytes(bytes[bad + 4..bad + 8].try_into().unwrap()) as usize;
    bytes[bad + length - 4..bad + length].copy_from_slice(&7u32.to_le_bytes());
    let (reports, result) = analyze(&bytes);
    let error = result.unwrap_err();
    assert_eq!(error.offset, bad as u64, "{error}");
    assert!(error.to_string().contains("corrupt"), "{error}");
    assert_eq!(reports[0].samples, 5);
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
        assert_eq!(result, Ok(200));
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
