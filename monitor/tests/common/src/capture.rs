//! tcpdump as the referee: a pcap of one interface in a lab namespace, read back as SYN-ACKs or
//! as every TCP segment, and the daemon's samples in the same shape for comparison.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Stdio},
    thread,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use seqwatch::{
    analyze::{
        capture::{Frame, read_frames},
        packet::parse_synack,
    },
    lab::Lab,
};

/// tcpdump writing a pcap of one interface in a namespace.
pub struct Capture {
    child: Child,
    pub file: PathBuf,
}

impl Capture {
    pub fn start(lab: &Lab, ns: &str, interface: &str, filter: &str, file: PathBuf) -> Capture {
        let mut child = lab
            .command_in(ns, "tcpdump")
            .args([
                "-i",
                interface,
                "-n",
                "-U",
                "--immediate-mode",
                "-s",
                "200",
                "-w",
            ])
            .arg(&file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcpdump (apt-get install tcpdump; ./x setup does)");
        let stderr = child.stderr.take().expect("tcpdump stderr");
        let mut lines = BufReader::new(stderr).lines();
        let ready = lines
            .next()
            .and_then(Result::ok)
            .is_some_and(|line| line.contains("listening on"));
        assert!(ready, "tcpdump did not start");
        thread::spawn(move || lines.for_each(drop));
        Capture { child, file }
    }

    /// Stops tcpdump (SIGINT flushes the file) and returns every SYN-ACK it captured as
    /// (server, client, seq, ack).
    pub fn stop(self) -> Vec<(SocketAddr, SocketAddr, u32, u32)> {
        let mut synacks = Vec::new();
        self.stop_and_read(|frame| {
            if let Some(synack) = parse_synack(frame.linktype, frame.data) {
                synacks.push((
                    synack.server,
                    synack.client,
                    synack.isn,
                    synack.peer_isn.wrapping_add(1),
                ));
            }
        });
        synacks
    }

    /// Stops tcpdump and returns every IPv4 TCP segment it captured, in order.
    pub fn stop_segments(self) -> Vec<CapturedSegment> {
        let mut segments = Vec::new();
        self.stop_and_read(|frame| {
            let Ok(sliced) = etherparse::SlicedPacket::from_ethernet(frame.data) else {
                return;
            };
            let (Some(etherparse::NetSlice::Ipv4(ip)), Some(etherparse::TransportSlice::Tcp(tcp))) =
                (sliced.net, sliced.transport)
            else {
                return;
            };
            let header = ip.header();
            segments.push(CapturedSegment {
                from: SocketAddr::from((header.source_addr(), tcp.source_port())),
                to: SocketAddr::from((header.destination_addr(), tcp.destination_port())),
                // Byte 13 of the TCP header: CWR … FIN.
                flags: tcp.slice()[13],
                seq: tcp.sequence_number(),
                ack: tcp.acknowledgment_number(),
            });
        });
        segments
    }

    fn stop_and_read(mut self, each: impl FnMut(Frame<'_>)) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT).expect("SIGINT tcpdump");
        self.child.wait().expect("wait tcpdump");
        let file = std::fs::File::open(&self.file).expect("open capture");
        read_frames(file, each).expect("read the capture");
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One TCP segment of a capture: its flags byte as on the wire (FIN 0x01 … ACK 0x10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapturedSegment {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
}

/// (server, client, seq, ack) of each sample, for comparison with a capture.
pub fn sample_tuples(samples: &[serde_json::Value]) -> Vec<(SocketAddr, SocketAddr, u32, u32)> {
    samples
        .iter()
        .map(|s| {
            (
                s["server"].as_str().unwrap().parse().unwrap(),
                s["client"].as_str().unwrap().parse().unwrap(),
                s["seq"].as_u64().unwrap() as u32,
                s["ack"].as_u64().unwrap() as u32,
            )
        })
        .collect()
}
