//! Finding SYN-ACKs in link-layer frames.

use std::net::{IpAddr, SocketAddr};

use etherparse::{EtherType, NetSlice, SlicedPacket, TcpOptionElement, TransportSlice};
use pcap_parser::Linktype;

use crate::scorer::TcpOptionsSummary;

/// Linux cooked capture v2 (`LINKTYPE_LINUX_SLL2`): 20-byte header, protocol first.
const LINUX_SLL2_HEADER: usize = 20;
/// BSD loopback (`LINKTYPE_NULL`/`LOOP`): a 4-byte address family, then IP.
const LOOPBACK_HEADER: usize = 4;

/// A SYN-ACK, seen from the server that sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynAck {
    pub server: SocketAddr,
    pub client: SocketAddr,
    pub isn: u32,
    pub peer_isn: u32,
    pub options: TcpOptionsSummary,
}

/// The SYN-ACK in `data`, if it is one on a supported link type (anything else is `None`).
pub fn parse_synack(linktype: Linktype, data: &[u8]) -> Option<SynAck> {
    let sliced = slice(linktype, data)?;
    let (source, destination) = match sliced.net? {
        NetSlice::Ipv4(ip) => (
            IpAddr::V4(ip.header().source_addr()),
            IpAddr::V4(ip.header().destination_addr()),
        ),
        NetSlice::Ipv6(ip) => (
            IpAddr::V6(ip.header().source_addr()),
            IpAddr::V6(ip.header().destination_addr()),
        ),
        NetSlice::Arp(_) => return None,
    };
    let TransportSlice::Tcp(tcp) = sliced.transport? else {
        return None;
    };
    if !(tcp.syn() && tcp.ack()) || tcp.rst() {
        return None;
    }
    let mut options = TcpOptionsSummary::default();
    for option in tcp.options_iterator().map_while(Result::ok) {
        match option {
            TcpOptionElement::MaximumSegmentSize(mss) => options.mss = Some(mss),
            TcpOptionElement::WindowScale(shift) => options.wscale = Some(shift),
            TcpOptionElement::SelectiveAcknowledgementPermitted => options.sack_permitted = true,
            TcpOptionElement::Timestamp(tsval, _) => options.tsval = Some(tsval),
            _ => {}
        }
    }
    Some(SynAck {
        server: SocketAddr::new(source, tcp.source_port()),
        client: SocketAddr::new(destination, tcp.destination_port()),
        isn: tcp.sequence_number(),
        peer_isn: tcp.acknowledgment_number().wrapping_sub(1),
        options,
    })
}

fn slice(linktype: Linktype, data: &[u8]) -> Option<SlicedPacket<'_>> {
    match linktype {
        Linktype::ETHERNET => SlicedPacket::from_ethernet(data).ok(),
        Linktype::LINUX_SLL => SlicedPacket::from_linux_sll(data).ok(),
        Linktype::LINUX_SLL2 => {
            let protocol = u16::from_be_bytes(data.get(..2)?.try_into().ok()?);
            SlicedPacket::from_ether_type(EtherType(protocol), data.get(LINUX_SLL2_HEADER..)?).ok()
        }
        Linktype::RAW | Linktype::IPV4 | Linktype::IPV6 => SlicedPacket::from_ip(data).ok(),
        // DLT_RAW's value differs between BSDs (12 or 14).
        Linktype(12) | Linktype(14) => SlicedPacket::from_ip(data).ok(),
        Linktype::NULL | Linktype::LOOP => SlicedPacket::from_ip(data.get(LOOPBACK_HEADER..)?).ok(),
        _ => None,
    }
}
