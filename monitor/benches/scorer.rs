//! Scorer ingest throughput, and `analyze` on a 1 M-packet capture against tcpdump.
//! Run: `cargo bench -p seqwatch --bench scorer` (plain harness; prints its numbers).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use etherparse::PacketBuilder;
use seqwatch::analyze::Analysis;
use seqwatch::scorer::{IsnObservation, ScorerConfig, ServiceScorer, TcpOptionsSummary};

const INGEST_SAMPLES: u32 = 4_000_000;
const CAPTURE_CONNECTIONS: u32 = 250_000;
/// SYN, SYN-ACK, ACK and one data segment per connection: 1 M packets.
const PACKETS_PER_CONNECTION: u32 = 4;
const SERVICES: u32 = 64;

fn main() -> anyhow::Result<()> {
    bench_ingest();
    bench_report();
    bench_analyze_against_tcpdump()?;
    Ok(())
}

/// A cheap deterministic stand-in for a uniform ISN source.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn observation(i: u32) -> IsnObservation {
    let random = splitmix(u64::from(i));
    IsnObservation {
        isn: random as u32,
        ts_ns: u64::from(i) * 1_000_000,
        server: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 443),
        client: SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 | i >> 14)),
            1024 + (i & 0x3fff) as u16,
        ),
        peer_isn: (random >> 32) as u32,
        options: TcpOptionsSummary::default(),
        syncookies: false,
    }
}

fn bench_ingest() {
    let observations: Vec<IsnObservation> = (0..INGEST_SAMPLES).map(observation).collect();
    let mut scorer = ServiceScorer::new(&ScorerConfig::default());
    let start = Instant::now();
    for obs in &observations {
        scorer.ingest(std::hint::black_box(obs));
    }
    let elapsed = start.elapsed();
    println!(
        "scorer ingest: {} samples in {:.3} s = {:.2} M samples/s (one core)",
        INGEST_SAMPLES,
        elapsed.as_secs_f64(),
        f64::from(INGEST_SAMPLES) / elapsed.as_secs_f64() / 1e6
    );
}

fn bench_report() {
    let config = ScorerConfig::default();
    let mut scorer = ServiceScorer::new(&config);
    for i in 0..config.window as u32 {
        scorer.ingest(&observation(i));
    }
    let start = Instant::now();
    let report = scorer.report("bench");
    println!(
        "scorer report over a full window of {}: {:.1} ms (verdict {:?})",
        config.window,
        start.elapsed().as_secs_f64() * 1e3,
        report.verdict
    );
}

/// Writes a legacy pcap of 1 M Ethernet/IPv4/TCP packets, a quarter of them SYN-ACKs.
fn write_capture(out: &mut impl Write) -> anyhow::Result<()> {
    out.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
    out.write_all(&2u16.to_le_bytes())?;
    out.write_all(&4u16.to_le_bytes())?;
    for word in [0u32, 0, 65_535, 1] {
        out.write_all(&word.to_le_bytes())?;
    }
    let mac = [2, 0, 0, 0, 0, 1];
    let mut packet = Vec::with_capacity(128);
    for connection in 0..CAPTURE_CONNECTIONS {
        let server = [192, 0, 2, (connection % SERVICES) as u8];
        let client = [
            10,
            (connection >> 16) as u8,
            (connection >> 8) as u8,
            connection as u8,
        ];
        let client_port = 1024 + (connection % 60_000) as u16;
        let client_isn = splitmix(u64::from(connection)) as u32;
        let server_isn = (splitmix(u64::from(connection) << 1) >> 32) as u32;
        let ts_us = u64::from(connection) * 40;
        for step in 0..PACKETS_PER_CONNECTION {
            packet.clear();
            let base = PacketBuilder::ethernet2(mac, mac);
            match step {
                0 => base
                    .ipv4(client, server, 64)
                    .tcp(client_port, 443, client_isn, 65_535)
                    .syn()
                    .write(&mut packet, &[])?,
                1 => base
                    .ipv4(server, client, 64)
                    .tcp(443, client_port, server_isn, 65_535)
                    .syn()
                    .ack(client_isn.wrapping_add(1))
                    .write(&mut packet, &[])?,
                2 => base
                    .ipv4(client, server, 64)
                    .tcp(client_port, 443, client_isn.wrapping_add(1), 65_535)
                    .ack(server_isn.wrapping_add(1))
                    .write(&mut packet, &[])?,
                _ => base
                    .ipv4(client, server, 64)
                    .tcp(client_port, 443, client_isn.wrapping_add(1), 65_535)
                    .ack(server_isn.wrapping_add(1))
                    .write(&mut packet, b"GET / HTTP/1.1\r\n\r\n")?,
            }
            let ts = ts_us + u64::from(step) * 5;
            for word in [
                (ts / 1_000_000) as u32,
                (ts % 1_000_000) as u32,
                packet.len() as u32,
                packet.len() as u32,
            ] {
                out.write_all(&word.to_le_bytes())?;
            }
            out.write_all(&packet)?;
        }
    }
    Ok(())
}

fn bench_analyze_against_tcpdump() -> anyhow::Result<()> {
    let mut file = tempfile::NamedTempFile::new()?;
    {
        let mut writer = std::io::BufWriter::new(file.as_file_mut());
        write_capture(&mut writer)?;
        writer.flush()?;
    }
    let path = file.path().to_owned();
    let packets = CAPTURE_CONNECTIONS * PACKETS_PER_CONNECTION;

    let start = Instant::now();
    let mut analysis = Analysis::new(
        ScorerConfig::default(),
        seqwatch::config::MAX_SERVICES.default,
    );
    analysis.add_capture(std::io::BufReader::new(std::fs::File::open(&path)?))?;
    let reports = analysis.reports();
    let ours = start.elapsed();
    println!(
        "analyze: {packets} packets, {} services, {:.3} s ({:.2} M packets/s)",
        reports.len(),
        ours.as_secs_f64(),
        f64::from(packets) / ours.as_secs_f64() / 1e6
    );

    let start = Instant::now();
    let status = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(&path)
        .arg("tcp[13] & 18 == 18")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let theirs: Duration = start.elapsed();
    match status {
        Ok(status) if status.success() => println!(
            "tcpdump -nn -r FILE 'tcp[13] & 18 == 18' > /dev/null: {:.3} s; analyze/tcpdump time ratio = {:.2}",
            theirs.as_secs_f64(),
            ours.as_secs_f64() / theirs.as_secs_f64()
        ),
        Ok(status) => println!("tcpdump failed ({status}); no ratio"),
        Err(error) => println!("tcpdump not runnable ({error}); no ratio"),
    }
    Ok(())
}
