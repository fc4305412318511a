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
    observation_with_isn(i, splitmix(u64::from(i)) as u32)
}

fn observation_with_isn(i: u32, isn: u32) -> IsnObservation {
    let random = splitmix(u64::from(i));
    IsnObservation {
        isn,
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

/// Reports timed per window kind (each after one more sample, so none is served from cache).
const REPORTS: usize = 15;

/// This thread's CPU time: a report's own cost, however busy the machine is.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `now`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

fn bench_report() {
    let config = ScorerConfig::default();
    // The first report of a process builds lookup tables once; a small window takes that cost.
    let mut warm_up = ServiceScorer::new(&config);
    for i in 0..64 {
        warm_up.ingest(&observation(i));
    }
    let start = thread_cpu_time();
    warm_up.report("warm-up");
    println!(
        "scorer report over 64 samples, the first of the process: {:.1} ms CPU",
        (thread_cpu_time() - start).as_secs_f64() * 1e3
    );
    let uniform: Vec<u32> = (0u64..)
        .map(|i| splitmix(i) as u32)
        .take(config.window + REPORTS)
        .collect();
    // Numerical Recipes' LCG: every predictor that can name it runs over the whole window.
    let lcg: Vec<u32> = std::iter::successors(Some(12_345u32), |x| {
        Some(x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223))
    })
    .take(config.window + REPORTS)
    .collect();
    for (name, isns) in [("uniform", &uniform), ("LCG", &lcg)] {
        let mut scorer = ServiceScorer::new(&config);
        for (i, &isn) in isns[..config.window].iter().enumerate() {
            scorer.ingest(&observation_with_isn(i as u32, isn));
        }
        let mut costs = Vec::with_capacity(REPORTS);
        let mut verdict = None;
        for (i, &isn) in isns.iter().enumerate().skip(config.window) {
            let start = thread_cpu_time();
            verdict = Some(scorer.report("bench").verdict);
            costs.push(thread_cpu_time() - start);
            scorer.ingest(&observation_with_isn(i as u32, isn));
        }
        costs.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "scorer report over a full window of {} ({name}): median {:.2} ms CPU, min {:.2}, max {:.2} over {REPORTS} reports (verdict {verdict:?})",
            config.window,
            ms(costs[REPORTS / 2]),
            ms(costs[0]),
            ms(costs[REPORTS - 1]),
        );
    }
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
        seqwatch::settings::MAX_SERVICES.default,
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
