//! The TLS record-framing check in the real kernel, on crafted frames (BPF_PROG_TEST_RUN):
//! record streams cut into segments every way TCP cuts them (records split across segments,
//! several per segment, a header split in two, retransmissions, an out-of-order segment) raise
//! nothing, and bytes that are not a header where one must start raise exactly one event at
//! the right offset; session ends are classified. Needs root.

use std::{net::SocketAddr, time::Instant};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
};
use common::test_run::{classifier, counter_total, load_classifiers, run_unchanged};
use etherparse::{PacketBuilder, TcpHeader};
use seqwatch::{
    detectors::tls::{self, Finding, PlaintextSuspected, TlsOptions},
    kernel::{self, records::decode},
    util::clock::Clock,
};
use seqwatch_common::tls::{
    CONFIG_DETECT_HELLO, CONFIG_LOG_PREFIX, SessionEnd, TlsCounter, TlsEvent,
};

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

const SERVER: ([u8; 4], u16) = ([192, 0, 2, 1], 443);
const CLIENT: ([u8; 4], u16) = ([198, 51, 100, 7], 51_000);
/// Our (the server's) ISN: the first payload byte is ISN + 1.
const ISN: u32 = 0xffff_ff00;

struct Check {
    ebpf: Ebpf,
    events: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    clock: Clock,
}

impl Check {
    fn load(config: u32) -> Check {
        let mut ebpf = load_classifiers();
        let options = TlsOptions {
            ports: vec![443],
            detect_hello: config & CONFIG_DETECT_HELLO != 0,
            log_prefix: config & CONFIG_LOG_PREFIX != 0,
        };
        tls::configure(&mut ebpf, &options).unwrap();
        let events = RingBuf::try_from(ebpf.take_map("TLS_EVENTS").unwrap()).unwrap();
        let counters = PerCpuArray::try_from(ebpf.take_map("TLS_COUNTERS").unwrap()).unwrap();
        Check {
            ebpf,
            events,
            counters,
            clock: Clock::now(),
        }
    }

    fn run(&mut self, name: &str, frame: &[u8]) -> Vec<Finding> {
        run_unchanged(&mut self.ebpf, name, frame);
        let mut findings = Vec::new();
        while let Some(item) = self.events.next() {
            let event = decode::<TlsEvent>(&item).expect("a whole event");
            findings.push(Finding::from_event(&event, &self.clock).expect("a known event"));
        }
        findings
    }

    /// The server's SYN-ACK leaving: the flow is followed from ISN + 1.
    fn open(&mut self) {
        let synack = frame(SERVER, CLIENT, SYN | ACK, ISN, &[]);
        assert_eq!(self.run("synack_egress", &synack), []);
    }

    /// Our payload bytes `stream[from..to]` leaving in one segment.
    fn send(&mut self, stream: &[u8], from: usize, to: usize) -> Vec<Finding> {
        let seq = ISN.wrapping_add(1).wrapping_add(from as u32);
        let segment = frame(SERVER, CLIENT, ACK | PSH, seq, &stream[from..to]);
        self.run("synack_egress", &segment)
    }

    /// Sends the stream cut at `cuts`; returns every finding.
    fn send_cut(&mut self, stream: &[u8], cuts: &[usize]) -> Vec<Finding> {
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(stream.len());
        bounds
            .windows(2)
            .flat_map(|w| self.send(stream, w[0], w[1]))
            .collect()
    }

    fn counter(&self, counter: TlsCounter) -> u64 {
        counter_total(&self.counters, counter as u32)
    }
}

fn frame(from: ([u8; 4], u16), to: ([u8; 4], u16), flags: u8, seq: u32, data: &[u8]) -> Vec<u8> {
    let mut tcp = TcpHeader::new(from.1, to.1, seq, 29_200);
    tcp.fin = flags & FIN != 0;
    tcp.syn = flags & SYN != 0;
    tcp.rst = flags & RST != 0;
    tcp.psh = flags & PSH != 0;
    tcp.ack = flags & ACK != 0;
    tcp.acknowledgment_number = 1;
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(from.0, to.0, 64)
        .tcp_header(tcp);
    let mut frame = Vec::new();
    builder.write(&mut frame, data).unwrap();
    frame
}

/// A record: type, version 0x0303, a body of `len` bytes of `fill`.
fn record(content_type: u8, len: usize, fill: u8) -> Vec<u8> {
    let mut record = vec![content_type, 3, 3, (len >> 8) as u8, len as u8];
    record.resize(5 + len, fill);
    record
}

/// A TLS 1.3-looking stream: handshake, change_cipher_spec, application data of many sizes.
fn tls_stream() -> Vec<u8> {
    let mut stream = record(22, 122, 0xa1);
    stream.extend(record(20, 1, 1));
    for len in [1000, 3, 0, 700, 17, 300, 64] {
        stream.extend(record(23, len, 0x5c));
    }
    stream
}

fn plaintexts(findings: &[Finding]) -> Vec<&PlaintextSuspected> {
    findings
        .iter()
        .filter_map(|f| match f {
            Finding::Plaintext(p) => Some(p),
            Finding::SessionEnded { .. } => None,
        })
        .collect()
}

#[test]
fn both_classifiers_load_quickly_with_few_verified_instructions() {
    let mut ebpf = Ebpf::load(kernel::object().unwrap()).unwrap();
    for name in ["synack_egress", "synack_ingress"] {
        let started = Instant::now();
        let program = classifier(&mut ebpf, name);
        program.load().unwrap();
        let elapsed = started.elapsed();
        let verified = program.info().unwrap().verified_instruction_count();
        println!("{name}: loaded in {elapsed:?}, {verified:?} verified instructions");
        // Before the TLS check: about 212 000 and 0.1 s on this 2-core VM (shared, so noisy).
        assert!(elapsed.as_secs_f64() < 1.5, "{name}: {elapsed:?}");
        assert!(verified.is_some_and(|count| count < 300_000), "{name}");
    }
}

#[test]
fn every_way_of_cutting_a_record_stream_is_clean() {
    let stream = tls_stream();
    let header_starts: Vec<usize> = {
        let (mut at, mut starts) = (0, Vec::new());
        while at < stream.len() {
            starts.push(at);
            at += 5 + usize::from(u16::from_be_bytes([stream[at + 3], stream[at + 4]]));
        }
        starts
    };
    let cases: Vec<(&str, Vec<usize>)> = vec![
        ("one segment, several records", vec![]),
        ("records split across segments", vec![60, 600, 1300, 2000]),
        (
            "a header split across two segments, at every byte",
            (1..5).map(|i| header_starts[2] + i).collect(),
        ),
        ("segment per byte around a header", (130..150).collect()),
        (
            "1448-byte segments",
            (1448..stream.len()).step_by(1448).collect(),
        ),
    ];
    for (what, cuts) in cases {
        // Header splits are only one per run: cut at one point at a time as well.
        let runs: Vec<Vec<usize>> = if what.starts_with("a header split") {
            cuts.iter().map(|cut| vec![*cut]).collect()
        } else {
            vec![cuts]
        };
        for cuts in runs {
            let mut check = Check::load(0);
            check.open();
            let findings = check.send_cut(&stream, &cuts);
            assert_eq!(findings, [], "{what}: {cuts:?}");
            assert_eq!(
                check.counter(TlsCounter::RecordsChecked),
                header_starts.len() as u64,
                "{what}: {cuts:?}: every header checked once"
            );
            assert_eq!(check.counter(TlsCounter::TrackingLost), 0, "{what}");
        }
    }
}

#[test]
fn retransmissions_are_skipped_and_checked_nowhere_twice() {
    let stream = tls_stream();
    let mut check = Check::load(0);
    check.open();
    assert_eq!(check.send(&stream, 0, 1000), []);
    let checked = check.counter(TlsCounter::RecordsChecked);
    // The same bytes again, and a repacketised retransmission overlapping the boundary.
    assert_eq!(check.send(&stream, 0, 1000), []);
    assert_eq!(check.send(&stream, 500, 1000), []);
    assert_eq!(check.counter(TlsCounter::RecordsChecked), checked);
    assert_eq!(check.send(&stream, 900, stream.len()), []);
    assert_eq!(check.counter(TlsCounter::TrackingLost), 0);
}

#[test]
fn an_out_of_order_segment_loses_the_boundaries_without_an_event_then_resyncs() {
    let stream = tls_stream();
    let mut check = Check::load(0);
    check.open();
    // The segment after a hole goes first: its boundaries cannot be known.
    assert_eq!(check.send(&stream, 2000, stream.len()), []);
    assert_eq!(check.counter(TlsCounter::TrackingLost), 1);
    // The hole, filled late, starts with a header: the flow resyncs there, and walks up to
    // the header the out-of-order segment held, which it cannot see again.
    assert_eq!(check.send(&stream, 0, 2000), [], "the hole, filled late");
    assert_eq!(check.counter(TlsCounter::Resynced), 1);
    // A later segment that starts with a record header brings the flow back...
    let mut more = stream.clone();
    more.extend(record(23, 40, 1));
    let resync_at = stream.len();
    more.extend(b"HTTP/1.1 200 OK\r\n\r\n");
    assert_eq!(check.send(&more, resync_at, resync_at + 45), []);
    assert_eq!(check.counter(TlsCounter::Resynced), 2);
    // ...and the check works again from there, counting offsets from the resync point.
    let found = check.send(&more, resync_at + 45, more.len());
    let found = plaintexts(&found);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (found[0].stream_offset, found[0].offset_from),
        (45, "resync")
    );
}

#[test]
fn garbage_where_a_header_must_start_is_one_event_at_its_offset() {
    let mut stream = tls_stream();
    let garbage_at = stream.len();
    stream.extend(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi");
    stream.extend(record(23, 30, 0));
    for cuts in [
        vec![],
        vec![garbage_at],
        vec![garbage_at + 2],
        vec![700, garbage_at + 10],
    ] {
        let mut check = Check::load(0);
        check.open();
        let findings = check.send_cut(&stream, &cuts);
        let found = plaintexts(&findings);
        assert_eq!(found.len(), 1, "{cuts:?}: exactly one event: {findings:?}");
        let event = found[0];
        assert_eq!(event.stream_offset, garbage_at as u32, "{cuts:?}");
        assert_eq!(
            event.seq,
            ISN.wrapping_add(1 + garbage_at as u32),
            "{cuts:?}"
        );
        assert_eq!(event.offset_from, "flow_start");
        assert_eq!(event.service, SocketAddr::from(SERVER));
        assert_eq!(event.source, SocketAddr::from(SERVER));
        assert_eq!(event.destination, SocketAddr::from(CLIENT));
        assert_eq!(
            event.prefix_hex, None,
            "no payload bytes without the switch"
        );
    }
}

#[test]
fn hostile_headers_are_caught_and_legitimate_edge_cases_are_not() {
    let bad: [(&str, [u8; 5]); 7] = [
        ("content type 19", [19, 3, 3, 0, 10]),
        ("content type 25 (DTLS only)", [25, 3, 3, 0, 10]),
        ("version 0x0300", [23, 3, 0, 0, 10]),
        ("version 0x0304 on the record layer", [23, 3, 4, 0, 10]),
        ("length 2^14 + 2049", [23, 3, 3, 0x48, 0x01]),
        ("empty handshake record", [22, 3, 3, 0, 0]),
        ("SSLv2-style bytes", [0x80, 0x2e, 1, 3, 1]),
    ];
    for (what, header) in bad {
        let mut check = Check::load(0);
        check.open();
        let mut stream = record(22, 50, 1);
        stream.extend(header);
        stream.extend([0u8; 10]);
        assert_eq!(
            plaintexts(&check.send(&stream, 0, stream.len())).len(),
            1,
            "{what}"
        );
    }
    let good: [(&str, Vec<u8>); 3] = [
        ("an empty application-data record", record(23, 0, 0)),
        (
            "the largest TLS 1.2 ciphertext",
            record(23, (1 << 14) + 2048, 0),
        ),
        ("a TLS 1.0 record version", vec![22, 3, 1, 0, 1, 1]),
    ];
    for (what, stream) in good {
        let mut check = Check::load(0);
        check.open();
        // A record longer than a test frame: only its head is sent.
        let end = stream.len().min(3000);
        assert_eq!(check.send(&stream, 0, end), [], "{what}");
        assert_eq!(check.counter(TlsCounter::TrackingLost), 0, "{what}");
    }
}

#[test]
fn the_prefix_switch_copies_sixteen_bytes_at_most() {
    let mut stream = record(23, 20, 0);
    let garbage_at = stream.len();
    stream.extend(b"GET /secret HTTP/1.1\r\n");
    let mut check = Check::load(CONFIG_LOG_PREFIX);
    check.open();
    let findings = check.send(&stream, 0, stream.len());
    let found = plaintexts(&findings);
    assert_eq!(found.len(), 1);
    let expected: String = stream[garbage_at..garbage_at + 16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(found[0].prefix_hex.as_deref(), Some(expected.as_str()));
    // Fewer bytes left than 16: only those.
    let mut check = Check::load(CONFIG_LOG_PREFIX);
    check.open();
    let short = [record(23, 3, 0), b"abcde".to_vec()].concat();
    let found = check.send(&short, 0, short.len());
    assert_eq!(
        plaintexts(&found)[0].prefix_hex.as_deref(),
        Some("6162636465")
    );
}

#[test]
fn hellos_on_other_ports_are_followed_and_other_first_payloads_are_not() {
    let server = ([192, 0, 2, 1], 9000);
    let client_hello = [record(22, 200, 0).as_slice(), b""].concat();
    let mut client_hello = client_hello;
    client_hello[5] = 1; // handshake type: ClientHello
    // We are the client (our SYN leaves): a ClientHello first, then garbage.
    let mut check = Check::load(CONFIG_DETECT_HELLO);
    let syn = frame(CLIENT, server, SYN, 7000, &[]);
    assert_eq!(check.run("synack_egress", &syn), []);
    let mut stream = client_hello.clone();
    let garbage_at = stream.len();
    stream.extend(b"plaintext!");
    let data = frame(CLIENT, server, ACK | PSH, 7001, &stream);
    let found = check.run("synack_egress", &data);
    let found = plaintexts(&found);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].stream_offset, garbage_at as u32);
    assert_eq!(
        found[0].service,
        SocketAddr::from(server),
        "the remote server"
    );
    // Without detection, or with a first payload that is no hello, nothing is followed.
    for (config, first) in [
        (0, client_hello.clone()),
        (CONFIG_DETECT_HELLO, b"GET / HTTP/1.1\r\n".to_vec()),
    ] {
        let mut check = Check::load(config);
        assert_eq!(check.run("synack_egress", &syn), []);
        assert_eq!(
            check.run("synack_egress", &frame(CLIENT, server, ACK, 7001, &first)),
            []
        );
        let later = 7001 + first.len() as u32;
        assert_eq!(
            check.run(
                "synack_egress",
                &frame(CLIENT, server, ACK, later, b"junk!")
            ),
            []
        );
        assert_eq!(check.counter(TlsCounter::RecordsChecked), 0);
    }
}

#[test]
fn session_ends_are_classified_once() {
    let app = record(23, 100, 0);
    let alert = record(21, 2, 2);
    let garbage = b"oops, plaintext".to_vec();
    let cases: [(&str, Vec<u8>, &str, u8, SessionEnd); 5] = [
        (
            "FIN after data",
            app.clone(),
            "synack_egress",
            FIN | ACK,
            SessionEnd::Fin,
        ),
        (
            "RST right after data",
            app.clone(),
            "synack_egress",
            RST | ACK,
            SessionEnd::ResetAfterData,
        ),
        (
            "peer's RST, no data",
            vec![],
            "synack_ingress",
            RST,
            SessionEnd::Reset,
        ),
        (
            "unencrypted alert then FIN",
            alert,
            "synack_egress",
            FIN | ACK,
            SessionEnd::Alert,
        ),
        (
            "plaintext then the peer's RST",
            [app, garbage].concat(),
            "synack_ingress",
            RST,
            SessionEnd::PlaintextThenCollapse,
        ),
    ];
    for (what, stream, program, flags, expected) in cases {
        let mut check = Check::load(0);
        check.open();
        if !stream.is_empty() {
            check.send(&stream, 0, stream.len());
        }
        let end_seq = ISN.wrapping_add(1 + stream.len() as u32);
        let end = if program == "synack_egress" {
            frame(SERVER, CLIENT, flags, end_seq, &[])
        } else {
            frame(CLIENT, SERVER, flags, 1, &[])
        };
        let found = check.run(program, &end);
        assert_eq!(
            found,
            [Finding::SessionEnded {
                service: SocketAddr::from(SERVER),
                end: expected
            }],
            "{what}"
        );
        assert_eq!(check.run(program, &end), [], "{what}: counted once");
    }
}

#[test]
fn a_hello_flow_is_followed_again_when_its_4_tuple_is_reused() {
    let server = ([192, 0, 2, 1], 9000);
    let mut server_hello = record(22, 90, 0);
    server_hello[5] = 2; // handshake type: ServerHello
    let mut check = Check::load(CONFIG_DETECT_HELLO);
    // A connection that ends before any payload: no session, nothing to report.
    assert_eq!(
        check.run("synack_egress", &frame(server, CLIENT, SYN | ACK, 100, &[])),
        []
    );
    assert_eq!(
        check.run("synack_ingress", &frame(CLIENT, server, RST, 1, &[])),
        []
    );
    // Then two TLS sessions, one after the other, on the same 4-tuple (the client reused its
    // port); the second leaks plaintext after its ServerHello.
    for (isn, leak) in [(5_000u32, false), (900_000, true)] {
        assert_eq!(
            check.run("synack_egress", &frame(server, CLIENT, SYN | ACK, isn, &[])),
            []
        );
        let mut stream = server_hello.clone();
        if leak {
            stream.extend(b"plaintext!");
        }
        let found = check.run(
            "synack_egress",
            &frame(server, CLIENT, ACK | PSH, isn + 1, &stream),
        );
        assert_eq!(
            plaintexts(&found).len(),
            usize::from(leak),
            "ISN {isn}: {found:?}"
        );
        let fin = frame(
            server,
            CLIENT,
            FIN | ACK,
            isn + 1 + stream.len() as u32,
            &[],
        );
        let ends: Vec<_> = check
            .run("synack_egress", &fin)
            .into_iter()
            .filter(|f| matches!(f, Finding::SessionEnded { .. }))
            .collect();
        assert_eq!(ends.len(), 1, "ISN {isn}: one session end, got {ends:?}");
    }
}
