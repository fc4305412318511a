//! Hand-built frames sent from a lab namespace: SYNs the kernel's own stack would not send
//! (802.1Q-tagged ones where the kernel has no VLAN devices, malformed ones for the anomaly
//! engine), built with etherparse and written whole to an AF_PACKET socket.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, bail};
use etherparse::{
    IpHeaders, IpNumber, Ipv4Header, Ipv6Header, PacketBuilder, TcpHeader, TcpOptionElement, VlanId,
};

use super::{Lab, responder::PacketSocket};

/// TCP flag bits, for [`Segment::flags`].
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
}

/// Any TCP segment, however illegal: flags, numbers, options and payload as given.
#[derive(Clone, Debug)]
pub struct Segment<'a> {
    pub from: SocketAddr,
    pub to: SocketAddr,
    /// Bits of [`flags`]; the ack number is sent whatever they say.
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub options: &'a [TcpOptionElement],
    pub payload: &'a [u8],
}

/// Sends frames out of one interface of a namespace to the veth peer.
pub struct Crafter {
    socket: PacketSocket,
    source_mac: [u8; 6],
    destination_mac: [u8; 6],
}

impl Crafter {
    /// A crafter on `lab.client_if`, addressing frames to `lab.server_if` (in a routed lab, to
    /// the router's interface towards the client).
    pub fn client_to_server(lab: &Lab) -> anyhow::Result<Crafter> {
        let next_hop = match &lab.router {
            Some(router) => (router.ns.as_str(), router.client_if.as_str()),
            None => (lab.server_ns.as_str(), lab.server_if.as_str()),
        };
        Self::open(lab, (&lab.client_ns, &lab.client_if), next_hop)
    }

    /// A crafter on `lab.server_if`, addressing frames to `lab.client_if` (in a routed lab, to
    /// the router's interface towards the server): what it sends passes the server's egress
    /// hook as if the server's stack had sent it.
    pub fn server_to_client(lab: &Lab) -> anyhow::Result<Crafter> {
        let next_hop = match &lab.router {
            Some(router) => (router.ns.as_str(), router.server_if.as_str()),
            None => (lab.client_ns.as_str(), lab.client_if.as_str()),
        };
        Self::open(lab, (&lab.server_ns, &lab.server_if), next_hop)
    }

    /// A crafter on the interface `from` (namespace, name), addressing frames to `to`.
    fn open(lab: &Lab, from: (&str, &str), to: (&str, &str)) -> anyhow::Result<Crafter> {
        let destination_mac = lab.run_in(to.0, || mac_address(to.1))?;
        lab.run_in(from.0, || {
            Ok(Crafter {
                socket: PacketSocket::open(from.1)?,
                source_mac: mac_address(from.1)?,
                destination_mac,
            })
        })
    }

    /// The MAC address frames are sent from.
    pub fn source_mac(&self) -> [u8; 6] {
        self.source_mac
    }

    /// The MAC address frames are sent to: the other end of the veth.
    pub fn destination_mac(&self) -> [u8; 6] {
        self.destination_mac
    }

    /// Sends one untagged segment.
    pub fn send_segment(&self, segment: &Segment) -> anyhow::Result<()> {
        let frame = self.frame(segment)?;
        self.socket.send(&frame).context("sending a crafted frame")
    }

    /// Sends one untagged segment stamped, as the kernel stamps its own, with its departure
    /// time on CLOCK_MONOTONIC.
    pub fn send_segment_departing(
        &self,
        segment: &Segment,
        departure_ns: u64,
    ) -> anyhow::Result<()> {
        let frame = self.frame(segment)?;
        self.socket
            .send_departing(&frame, departure_ns)
            .context("sending a crafted frame with a departure time")
    }

    fn frame(&self, segment: &Segment) -> anyhow::Result<Vec<u8>> {
        let mut header =
            TcpHeader::new(segment.from.port(), segment.to.port(), segment.seq, 64_240);
        header.fin = segment.flags & flags::FIN != 0;
        header.syn = segment.flags & flags::SYN != 0;
        header.rst = segment.flags & flags::RST != 0;
        header.psh = segment.flags & flags::PSH != 0;
        header.ack = segment.flags & flags::ACK != 0;
        header.urg = segment.flags & flags::URG != 0;
        header.acknowledgment_number = segment.ack;
        header.set_options(segment.options)?;
        let builder = PacketBuilder::ethernet2(self.source_mac, self.destination_mac)
            .ip(ip_headers(segment.from.ip(), segment.to.ip())?)
            .tcp_header(header);
        let mut frame = Vec::with_capacity(builder.size(segment.payload.len()));
        builder.write(&mut frame, segment.payload)?;
        Ok(frame)
    }

    /// A SYN from `from` to `to` with the client ISN `isn`, inside the given VLAN tags
    /// (none, one 802.1Q tag, or an 802.1ad + 802.1Q pair).
    pub fn send_syn(
        &self,
        vlans: &[u16],
        from: SocketAddr,
        to: SocketAddr,
        isn: u32,
    ) -> anyhow::Result<()> {
        self.send_tcp(vlans, from, to, isn, None)
    }

    /// A SYN-ACK from `from` to `to`, as a server with ISN `seq` answering the client ISN
    /// `ack - 1` would send it.
    pub fn send_synack(
        &self,
        vlans: &[u16],
        from: SocketAddr,
        to: SocketAddr,
        seq: u32,
        ack: u32,
    ) -> anyhow::Result<()> {
        self.send_tcp(vlans, from, to, seq, Some(ack))
    }

    fn send_tcp(
        &self,
        vlans: &[u16],
        from: SocketAddr,
        to: SocketAddr,
        seq: u32,
        ack: Option<u32>,
    ) -> anyhow::Result<()> {
        let ethernet = PacketBuilder::ethernet2(self.source_mac, self.destination_mac);
        let ip = ip_headers(from.ip(), to.ip())?;
        let ip_step = match *vlans {
            [] => ethernet.ip(ip),
            [id] => ethernet.single_vlan(VlanId::try_new(id)?).ip(ip),
            [outer, inner] => ethernet
                .double_vlan(VlanId::try_new(outer)?, VlanId::try_new(inner)?)
                .ip(ip),
            _ => bail!("at most two VLAN tags"),
        };
        let mut builder = ip_step.tcp(from.port(), to.port(), seq, 64_240).syn();
        if let Some(ack) = ack {
            builder = builder.ack(ack);
        }
        let builder = builder.options(&[
            TcpOptionElement::MaximumSegmentSize(1460),
            TcpOptionElement::SelectiveAcknowledgementPermitted,
        ])?;
        let mut frame = Vec::with_capacity(builder.size(0));
        builder.write(&mut frame, &[])?;
        self.socket.send(&frame).context("sending a crafted frame")
    }
}

fn ip_headers(from: IpAddr, to: IpAddr) -> anyhow::Result<IpHeaders> {
    Ok(match (from, to) {
        (IpAddr::V4(s), IpAddr::V4(d)) => IpHeaders::Ipv4(
            Ipv4Header::new(0, 64, IpNumber::TCP, s.octets(), d.octets())?,
            Default::default(),
        ),
        (IpAddr::V6(s), IpAddr::V6(d)) => IpHeaders::Ipv6(
            Ipv6Header {
                traffic_class: 0,
                flow_label: Default::default(),
                payload_length: 0,
                next_header: IpNumber::TCP,
                hop_limit: 64,
                source: s.octets(),
                destination: d.octets(),
            },
            Default::default(),
        ),
        _ => bail!("{from} and {to} are of different families"),
    })
}

/// The MAC address of an interface of the calling thread's network namespace.
fn mac_address(interface: &str) -> anyhow::Result<[u8; 6]> {
    nix::ifaddrs::getifaddrs()?
        .filter(|entry| entry.interface_name == interface)
        .find_map(|entry| entry.address?.as_link_addr()?.addr())
        .with_context(|| format!("{interface} has no MAC address"))
}
