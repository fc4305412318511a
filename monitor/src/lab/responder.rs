//! The weak ISN responder: answers TCP SYNs to one port with SYN-ACKs whose ISNs come from a
//! chosen generator. It reads and writes whole frames on an AF_PACKET socket, so the
//! namespace's own TCP stack never takes part in the handshake.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{LineWriter, Write};
use std::net::{IpAddr, Ipv6Addr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, bail};
use etherparse::{
    IpHeaders, IpNumber, Ipv4Header, Ipv6Header, LinkExtSlice, LinkSlice, NetSlice, PacketBuilder,
    SlicedPacket, TcpOptionElement, TransportSlice, VlanId,
};
use nix::sys::socket::{
    self, AddressFamily, Backlog, LinkAddr, MsgFlags, SockFlag, SockProtocol, SockType,
    SockaddrIn6, SockaddrLike, setsockopt, sockopt,
};
use nix::sys::time::TimeVal;
use serde::{Deserialize, Serialize};

use super::generators::{FourTuple, GeneratorKind, IsnGenerator};
use super::netns::{Lab, ensure_root, enter_netns};
use crate::util::clock::monotonic_ns;

/// How long the receive loop blocks before it looks at the stop flag again.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Connections whose ISN is remembered for retransmitted SYNs; the oldest are forgotten.
const REMEMBERED_CONNECTIONS: usize = 65_536;
const TTL: u8 = 64;
const MSS: u16 = 1460;
const WINDOW: u16 = 64_240;
const WINDOW_SCALE: u8 = 7;
/// Largest frame we read; SYNs are far smaller.
const FRAME_BUFFER: usize = 65_536;

/// What the responder runs with.
#[derive(Debug, Clone)]
pub struct ResponderConfig {
    /// Interface to answer on (in the responder's namespace).
    pub interface: String,
    /// TCP port to answer SYNs to.
    pub port: u16,
    pub generator: GeneratorKind,
    pub seed: u64,
    /// Where to append one JSON line per SYN-ACK sent, as it is sent.
    pub record: Option<PathBuf>,
}

/// One SYN-ACK the responder sent: `saddr:sport` is the responder's side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentSynAck {
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub isn: u32,
    pub ack: u32,
    /// Answer to a retransmitted SYN: the ISN is the one sent before for that SYN.
    pub retransmission: bool,
    /// CLOCK_MONOTONIC when the ISN was chosen (the clock eBPF's `bpf_ktime_get_ns` reads).
    pub monotonic_ns: u64,
    /// VLAN id of the SYN (and of the SYN-ACK), when tagged.
    pub vlan: Option<u16>,
}

/// A responder running on its own thread in a network namespace.
pub struct Responder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<Vec<SentSynAck>>>>,
}

impl Responder {
    /// Starts a responder in `lab.server_ns`; it answers SYNs once this returns.
    pub fn spawn_in(lab: &Lab, config: ResponderConfig) -> anyhow::Result<Responder> {
        Self::spawn_in_netns(&lab.server_ns, config)
    }

    /// Starts a responder in the named network namespace (`/run/netns/<ns>`).
    pub fn spawn_in_netns(ns: &str, config: ResponderConfig) -> anyhow::Result<Responder> {
        ensure_root()?;
        let netns = Lab::netns_path(ns);
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("responder-{ns}"))
            .spawn(move || {
                let session = match Session::open(&netns, config) {
                    Ok(session) => {
                        let _ = ready_tx.send(Ok(()));
                        session
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok(Vec::new());
                    }
                };
                session.serve(&thread_stop)
            })
            .context("spawning the responder thread")?;
        let responder = Responder {
            stop,
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(responder),
            Ok(Err(e)) => Err(e.context(format!("starting the responder in {ns}"))),
            Err(mpsc::RecvError) => {
                responder.stop()?;
                bail!("the responder thread ended before it was ready")
            }
        }
    }

    /// Stops the responder and returns every SYN-ACK it sent, in order.
    pub fn stop(mut self) -> anyhow::Result<Vec<SentSynAck>> {
        self.finish()
    }

    fn finish(&mut self) -> anyhow::Result<Vec<SentSynAck>> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            None => Ok(Vec::new()),
        }
    }
}

impl Drop for Responder {
    /// A responder dropped without `stop()` (e.g. a failing test) still ends its thread,
    /// which holds sockets in the lab's namespace.
    fn drop(&mut self) {
        if self.thread.is_some()
            && let Err(e) = self.finish()
        {
            log::error!("responder failed: {e:#}");
        }
    }
}

/// The responder's open resources, on its thread inside the namespace.
struct Session {
    socket: PacketSocket,
    /// Held open only to keep the kernel from answering; see [`silent_listener`].
    _silencer: TcpListener,
    record: Option<LineWriter<File>>,
    port: u16,
    generator: Box<dyn IsnGenerator + Send>,
    remembered: IsnMemory,
    sent: Vec<SentSynAck>,
}

impl Session {
    fn open(netns: &Path, config: ResponderConfig) -> anyhow::Result<Session> {
        enter_netns(netns)?;
        let socket = PacketSocket::open(&config.interface)?;
        let silencer = silent_listener(config.port)?;
        let record = match &config.record {
            Some(path) => Some(LineWriter::new(
                File::create(path).with_context(|| format!("creating {}", path.display()))?,
            )),
            None => None,
        };
        Ok(Session {
            socket,
            _silencer: silencer,
            record,
            port: config.port,
            generator: config.generator.build(config.seed),
            remembered: IsnMemory::default(),
            sent: Vec::new(),
        })
    }

    fn serve(mut self, stop: &AtomicBool) -> anyhow::Result<Vec<SentSynAck>> {
        let mut frame = vec![0u8; FRAME_BUFFER];
        while !stop.load(Ordering::Relaxed) {
            let Some(len) = self.socket.receive_incoming(&mut frame)? else {
                continue;
            };
            if let Some(syn) = Syn::parse(&frame[..len], self.port) {
                self.answer(&syn)?;
            }
        }
        Ok(self.sent)
    }

    fn answer(&mut self, syn: &Syn) -> anyhow::Result<()> {
        let now_ns = monotonic_ns();
        let four_tuple = syn.reply_tuple();
        let key = (four_tuple, syn.client_isn);
        let (isn, retransmission) = match self.remembered.get(&key) {
            Some(isn) => (isn, true),
            None => {
                let isn = self.generator.next_isn(&four_tuple, now_ns);
                self.remembered.insert(key, isn);
                (isn, false)
            }
        };
        let timestamp = (now_ns / 1_000_000) as u32;
        self.socket
            .send(&syn.syn_ack(isn, timestamp)?)
            .context("sending a SYN-ACK")?;
        let sent = SentSynAck {
            saddr: four_tuple.saddr,
            sport: four_tuple.sport,
            daddr: four_tuple.daddr,
            dport: four_tuple.dport,
            isn,
            ack: syn.client_isn.wrapping_add(1),
            retransmission,
            monotonic_ns: now_ns,
            vlan: syn.vlan.map(|id| id.value()),
        };
        if let Some(record) = &mut self.record {
            serde_json::to_writer(&mut *record, &sent)?;
            record.write_all(b"\n").context("writing the record")?;
        }
        self.sent.push(sent);
        Ok(())
    }
}

/// The ISNs given to recent connections, keyed by four-tuple and client ISN, so that a
/// retransmitted SYN gets the same SYN-ACK again as from a real stack.
#[derive(Default)]
struct IsnMemory {
    isns: HashMap<(FourTuple, u32), u32>,
    oldest_first: VecDeque<(FourTuple, u32)>,
}

impl IsnMemory {
    fn get(&self, key: &(FourTuple, u32)) -> Option<u32> {
        self.isns.get(key).copied()
    }

    fn insert(&mut self, key: (FourTuple, u32), isn: u32) {
        if self.oldest_first.len() == REMEMBERED_CONNECTIONS
            && let Some(oldest) = self.oldest_first.pop_front()
        {
            self.isns.remove(&oldest);
        }
        self.isns.insert(key, isn);
        self.oldest_first.push_back(key);
    }
}

/// The TCP options of a SYN that shape the SYN-ACK's options.
#[derive(Debug, Default, PartialEq, Eq)]
struct SynOptions {
    sack_permitted: bool,
    window_scale: bool,
    timestamp: Option<u32>,
}

/// A parsed SYN, with what the SYN-ACK needs.
#[derive(Debug)]
struct Syn {
    client_mac: [u8; 6],
    server_mac: [u8; 6],
    vlan: Option<VlanId>,
    client: IpAddr,
    server: IpAddr,
    client_port: u16,
    server_port: u16,
    client_isn: u32,
    options: SynOptions,
}

impl Syn {
    /// The frame as a SYN (without ACK) to `port`, or `None` for anything else.
    fn parse(frame: &[u8], port: u16) -> Option<Syn> {
        let packet = SlicedPacket::from_ethernet(frame).ok()?;
        let Some(LinkSlice::Ethernet2(ethernet)) = &packet.link else {
            return None;
        };
        let Some(TransportSlice::Tcp(tcp)) = &packet.transport else {
            return None;
        };
        if !tcp.syn() || tcp.ack() || tcp.rst() || tcp.destination_port() != port {
            return None;
        }
        let (client, server) = match packet.net.as_ref()? {
            NetSlice::Ipv4(ip) => (
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
            ),
            NetSlice::Ipv6(ip) => (
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
            ),
            NetSlice::Arp(_) => return None,
        };
        let mut vlans = packet.link_exts.iter().filter_map(|ext| match ext {
            LinkExtSlice::Vlan(vlan) => Some(vlan.vlan_identifier()),
            LinkExtSlice::Macsec(_) => None,
        });
        let vlan = vlans.next();
        if vlans.next().is_some() {
            return None; // Q-in-Q is beyond the lab.
        }
        let mut options = SynOptions::default();
        for option in tcp.options_iterator().flatten() {
            match option {
                TcpOptionElement::SelectiveAcknowledgementPermitted => {
                    options.sack_permitted = true
                }
                TcpOptionElement::WindowScale(_) => options.window_scale = true,
                TcpOptionElement::Timestamp(tsval, _) => options.timestamp = Some(tsval),
                _ => {}
            }
        }
        Some(Syn {
            client_mac: ethernet.source(),
            server_mac: ethernet.destination(),
            vlan,
            client,
            server,
            client_port: tcp.source_port(),
            server_port: tcp.destination_port(),
            client_isn: tcp.sequence_number(),
            options,
        })
    }

    fn reply_tuple(&self) -> FourTuple {
        FourTuple {
            saddr: self.server,
            sport: self.server_port,
            daddr: self.client,
            dport: self.client_port,
        }
    }

    /// The SYN-ACK frame: addresses and ports swapped, the options Linux would answer
    /// with (only those the SYN offered), checksums computed.
    fn syn_ack(&self, isn: u32, timestamp: u32) -> anyhow::Result<Vec<u8>> {
        let ip = match (self.server, self.client) {
            (IpAddr::V4(server), IpAddr::V4(client)) => IpHeaders::Ipv4(
                Ipv4Header::new(0, TTL, IpNumber::TCP, server.octets(), client.octets())?,
                Default::default(),
            ),
            (IpAddr::V6(server), IpAddr::V6(client)) => IpHeaders::Ipv6(
                Ipv6Header {
                    hop_limit: TTL,
                    source: server.octets(),
                    destination: client.octets(),
                    ..Default::default()
                },
                Default::default(),
            ),
            _ => bail!("SYN mixes IPv4 and IPv6 addresses"),
        };
        let ethernet = PacketBuilder::ethernet2(self.server_mac, self.client_mac);
        let ip_step = match self.vlan {
            Some(id) => ethernet.single_vlan(id).ip(ip),
            None => ethernet.ip(ip),
        };
        let builder = ip_step
            .tcp(self.server_port, self.client_port, isn, WINDOW)
            .syn()
            .ack(self.client_isn.wrapping_add(1))
            .options(&self.syn_ack_options(timestamp))
            .map_err(|e| anyhow::anyhow!("SYN-ACK options: {e}"))?;
        let mut frame = Vec::with_capacity(builder.size(0));
        builder.write(&mut frame, &[])?;
        Ok(frame)
    }

    /// Linux's order: MSS, SACK-permitted, timestamps, NOP, window scale.
    fn syn_ack_options(&self, timestamp: u32) -> Vec<TcpOptionElement> {
        let mut options = vec![TcpOptionElement::MaximumSegmentSize(MSS)];
        match (self.options.sack_permitted, self.options.timestamp) {
            (true, Some(echo)) => options.extend([
                TcpOptionElement::SelectiveAcknowledgementPermitted,
                TcpOptionElement::Timestamp(timestamp, echo),
            ]),
            (false, Some(echo)) => options.extend([
                TcpOptionElement::Noop,
                TcpOptionElement::Noop,
                TcpOptionElement::Timestamp(timestamp, echo),
            ]),
            (true, None) => options.extend([
                TcpOptionElement::Noop,
                TcpOptionElement::Noop,
                TcpOptionElement::SelectiveAcknowledgementPermitted,
            ]),
            (false, None) => {}
        }
        if self.options.window_scale {
            options.extend([
                TcpOptionElement::Noop,
                TcpOptionElement::WindowScale(WINDOW_SCALE),
            ]);
        }
        options
    }
}

/// An AF_PACKET socket bound to one interface, seeing every frame on it.
pub(crate) struct PacketSocket {
    fd: OwnedFd,
    ifindex: usize,
}

impl PacketSocket {
    pub(crate) fn open(interface: &str) -> anyhow::Result<PacketSocket> {
        let ifindex = nix::net::if_::if_nametoindex(interface)
            .with_context(|| format!("no interface {interface} here"))?;
        let fd = socket::socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::EthAll,
        )
        .context("opening an AF_PACKET socket")?;
        let address = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: (libc::ETH_P_ALL as u16).to_be(),
            sll_ifindex: ifindex as i32,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        // SAFETY: `address` is a complete sockaddr_ll of the given length.
        let address = unsafe {
            LinkAddr::from_raw(
                (&raw const address).cast(),
                Some(size_of::<libc::sockaddr_ll>() as u32),
            )
        }
        .context("building the AF_PACKET address")?;
        socket::bind(fd.as_raw_fd(), &address)
            .with_context(|| format!("binding an AF_PACKET socket to {interface}"))?;
        setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &TimeVal::new(0, STOP_POLL_INTERVAL.as_micros() as _),
        )?;
        Ok(PacketSocket {
            fd,
            ifindex: ifindex as usize,
        })
    }

    /// Reads a frame that arrived on the interface: `None` after the poll interval, and
    /// for frames the host sent (or that another interface saw before the socket was bound).
    fn receive_incoming(&self, frame: &mut [u8]) -> anyhow::Result<Option<usize>> {
        match socket::recvfrom::<LinkAddr>(self.fd.as_raw_fd(), frame) {
            Ok((len, Some(from)))
                if from.ifindex() == self.ifindex && from.pkttype() != libc::PACKET_OUTGOING =>
            {
                Ok(Some(len))
            }
            Ok(_) => Ok(None),
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => Ok(None),
            Err(e) => Err(e).context("reading from the AF_PACKET socket"),
        }
    }

    pub(crate) fn send(&self, frame: &[u8]) -> nix::Result<()> {
        socket::send(self.fd.as_raw_fd(), frame, MsgFlags::empty()).map(|_| ())
    }

    /// Sends a frame whose skb carries `departure_ns` (CLOCK_MONOTONIC) as its delivery time,
    /// as the kernel's own TCP stamps its segments: SO_TXTIME and one SCM_TXTIME message.
    pub(crate) fn send_departing(&self, frame: &[u8], departure_ns: u64) -> nix::Result<()> {
        let monotonic = libc::sock_txtime {
            clockid: libc::CLOCK_MONOTONIC,
            flags: 0,
        };
        setsockopt(&self.fd, sockopt::TxTime, &monotonic)?;
        let frame = [std::io::IoSlice::new(frame)];
        let departure = [socket::ControlMessage::TxTime(&departure_ns)];
        socket::sendmsg::<()>(
            self.fd.as_raw_fd(),
            &frame,
            &departure,
            MsgFlags::empty(),
            None,
        )
        .map(|_| ())
    }
}

/// A listening socket on `[::]:port` (IPv4 too) whose socket filter drops every segment.
/// The kernel would otherwise answer the SYNs (and the ACKs that follow) with RSTs as no
/// socket listens on the port; TCP discards a segment its socket filter rejects silently.
/// Unlike a tc/nftables rule it needs no tool, covers only this port and goes away with
/// the socket.
fn silent_listener(port: u16) -> anyhow::Result<TcpListener> {
    let fd = socket::socket(
        AddressFamily::Inet6,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("opening the silencing TCP socket")?;
    setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
    attach_drop_all_filter(&fd)?;
    let any = SockaddrIn6::from(std::net::SocketAddrV6::new(
        Ipv6Addr::UNSPECIFIED,
        port,
        0,
        0,
    ));
    socket::bind(fd.as_raw_fd(), &any).with_context(|| {
        format!("port {port} is taken in this namespace; the responder needs it free")
    })?;
    socket::listen(&fd, Backlog::new(1)?)?;
    Ok(TcpListener::from(fd))
}

/// A one-instruction classic BPF socket filter: accept 0 bytes, i.e. drop.
fn attach_drop_all_filter(fd: &impl AsFd) -> anyhow::Result<()> {
    let mut drop_all = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    let program = libc::sock_fprog {
        len: drop_all.len() as u16,
        filter: drop_all.as_mut_ptr(),
    };
    // SAFETY: `program` points to `drop_all`, which outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const program).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("attaching the socket filter");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use etherparse::TcpHeader;

    use super::*;

    const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn syn_frame(
        client: IpAddr,
        server: IpAddr,
        vlan: Option<u16>,
        options: &[TcpOptionElement],
    ) -> Vec<u8> {
        let ip = match (client, server) {
            (IpAddr::V4(c), IpAddr::V4(s)) => IpHeaders::Ipv4(
                Ipv4Header::new(0, 64, IpNumber::TCP, c.octets(), s.octets()).unwrap(),
                Default::default(),
            ),
            (IpAddr::V6(c), IpAddr::V6(s)) => IpHeaders::Ipv6(
                Ipv6Header {
                    hop_limit: 64,
                    source: c.octets(),
                    destination: s.octets(),
                    ..Default::default()
                },
                Default::default(),
            ),
            _ => unreachable!(),
        };
        let ethernet = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC);
        let step = match vlan {
            Some(id) => ethernet.single_vlan(VlanId::try_new(id).unwrap()).ip(ip),
            None => ethernet.ip(ip),
        };
        let builder = step
            .tcp(40_000, 80, 0xdead_beef, 65_535)
            .syn()
            .options(options)
            .unwrap();
        let mut frame = Vec::new();
        builder.write(&mut frame, &[]).unwrap();
        frame
    }

    const LINUX_SYN_OPTIONS: [TcpOptionElement; 5] = [
        TcpOptionElement::MaximumSegmentSize(1460),
        TcpOptionElement::SelectiveAcknowledgementPermitted,
        TcpOptionElement::Timestamp(12345, 0),
        TcpOptionElement::Noop,
        TcpOptionElement::WindowScale(7),
    ];

    /// Parses a SYN-ACK frame and checks its checksums; returns its TCP header, the VLAN
    /// id and the IP addresses (source, destination).
    fn check_syn_ack(frame: &[u8]) -> (TcpHeader, Option<u16>, IpAddr, IpAddr) {
        let packet = SlicedPacket::from_ethernet(frame).unwrap();
        let Some(LinkSlice::Ethernet2(ethernet)) = &packet.link else {
            panic!()
        };
        assert_eq!(
            (ethernet.source(), ethernet.destination()),
            (SERVER_MAC, CLIENT_MAC)
        );
        let vlan = packet.vlan_ids().first().map(|id| id.value());
        let Some(TransportSlice::Tcp(tcp)) = &packet.transport else {
            panic!()
        };
        let header = tcp.to_header();
        let (source, destination, checksum) = match packet.net.as_ref().unwrap() {
            NetSlice::Ipv4(ip) => {
                let ip = ip.header().to_header();
                assert_eq!(ip.header_checksum, ip.calc_header_checksum());
                assert_eq!(ip.time_to_live, TTL);
                let checksum = header.calc_checksum_ipv4(&ip, &[]).unwrap();
                (ip.source.into(), ip.destination.into(), checksum)
            }
            NetSlice::Ipv6(ip) => {
                let ip = ip.header().to_header();
                assert_eq!(ip.hop_limit, TTL);
                let checksum = header.calc_checksum_ipv6(&ip, &[]).unwrap();
                (ip.source.into(), ip.destination.into(), checksum)
            }
            NetSlice::Arp(_) => panic!(),
        };
        assert_eq!(header.checksum, checksum);
        (header, vlan, source, destination)
    }

    #[test]
    fn answers_an_ipv4_syn_like_linux() {
        let (client, server) = (
            Ipv4Addr::new(10, 0, 0, 2).into(),
            Ipv4Addr::new(10, 0, 0, 1).into(),
        );
        let syn = Syn::parse(&syn_frame(client, server, None, &LINUX_SYN_OPTIONS), 80).unwrap();
        assert_eq!(syn.client_isn, 0xdead_beef);
        let (tcp, vlan, source, destination) = check_syn_ack(&syn.syn_ack(42, 777).unwrap());
        assert_eq!((source, destination, vlan), (server, client, None));
        assert_eq!((tcp.source_port, tcp.destination_port), (80, 40_000));
        assert!(tcp.syn && tcp.ack && !tcp.rst && !tcp.fin);
        assert_eq!(tcp.sequence_number, 42);
        assert_eq!(tcp.acknowledgment_number, 0xdead_bef0);
        let options: Vec<_> = tcp.options.elements_iter().map(Result::unwrap).collect();
        assert_eq!(
            options,
            [
                TcpOptionElement::MaximumSegmentSize(MSS),
                TcpOptionElement::SelectiveAcknowledgementPermitted,
                TcpOptionElement::Timestamp(777, 12345),
                TcpOptionElement::Noop,
                TcpOptionElement::WindowScale(WINDOW_SCALE),
            ]
        );
    }

    #[test]
    fn answers_a_tagged_ipv6_syn_with_the_same_tag_and_only_offered_options() {
        let client: IpAddr = "fd00::2".parse::<Ipv6Addr>().unwrap().into();
        let server: IpAddr = "fd00::1".parse::<Ipv6Addr>().unwrap().into();
        let frame = syn_frame(
            client,
            server,
            Some(42),
            &[TcpOptionElement::MaximumSegmentSize(1400)],
        );
        let syn = Syn::parse(&frame, 80).unwrap();
        let (tcp, vlan, source, destination) = check_syn_ack(&syn.syn_ack(u32::MAX, 1).unwrap());
        assert_eq!((source, destination, vlan), (server, client, Some(42)));
        assert_eq!(tcp.sequence_number, u32::MAX);
        let options: Vec<_> = tcp.options.elements_iter().map(Result::unwrap).collect();
        assert_eq!(options, [TcpOptionElement::MaximumSegmentSize(MSS)]);
    }

    #[test]
    fn ignores_other_ports_and_segments_that_are_not_syns() {
        let (client, server) = (
            Ipv4Addr::new(10, 0, 0, 2).into(),
            Ipv4Addr::new(10, 0, 0, 1).into(),
        );
        let syn = syn_frame(client, server, None, &[]);
        assert!(Syn::parse(&syn, 81).is_none());
        let syn_ack = Syn::parse(&syn, 80).unwrap().syn_ack(1, 1).unwrap();
        // A SYN-ACK is no SYN, even to the port it is addressed to.
        assert!(Syn::parse(&syn_ack, 40_000).is_none());
        assert!(Syn::parse(&syn[..20], 80).is_none());
    }

    #[test]
    fn memory_forgets_the_oldest_connection_first() {
        let tuple = |port| FourTuple {
            saddr: Ipv4Addr::LOCALHOST.into(),
            sport: 80,
            daddr: Ipv4Addr::LOCALHOST.into(),
            dport: port,
        };
        let mut memory = IsnMemory::default();
        for i in 0..=REMEMBERED_CONNECTIONS as u32 {
            memory.insert((tuple((i % 65_536) as u16), i), i);
        }
        assert_eq!(memory.get(&(tuple(0), 0)), None);
        assert_eq!(memory.get(&(tuple(1), 1)), Some(1));
        assert_eq!(memory.isns.len(), REMEMBERED_CONNECTIONS);
    }
}
