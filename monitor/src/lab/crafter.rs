//! Hand-built frames sent from a lab namespace: SYNs the kernel's own stack would not send
//! (802.1Q-tagged ones where the kernel has no VLAN devices, malformed ones for the anomaly
//! engine), built with etherparse and written whole to an AF_PACKET socket.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, bail};
use etherparse::{
    IpHeaders, IpNumber, Ipv4Header, Ipv6Header, PacketBuilder, TcpOptionElement, VlanId,
};

use super::{Lab, responder::PacketSocket};

/// Sends frames out of one interface of a namespace to the veth peer.
pub struct Crafter {
    socket: PacketSocket,
    source_mac: [u8; 6],
    destination_mac: [u8; 6],
}

impl Crafter {
    /// A crafter on `lab.client_if`, addressing frames to `lab.server_if`.
    pub fn client_to_server(lab: &Lab) -> anyhow::Result<Crafter> {
        let destination_mac = lab.run_in(&lab.server_ns, || mac_address(&lab.server_if))?;
        lab.run_in(&lab.client_ns, || {
            Ok(Crafter {
                socket: PacketSocket::open(&lab.client_if)?,
                source_mac: mac_address(&lab.client_if)?,
                destination_mac,
            })
        })
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
