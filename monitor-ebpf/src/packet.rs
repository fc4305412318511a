//! Header walking shared by the detectors: Ethernet (802.1Q/802.1ad tags), IPv4 (IHL checked),
//! IPv6 (extension headers walked, non-first fragments skipped), TCP (data offset checked).
//!
//! Two paths: `plain_tcp` reads an untagged IPv4/IPv6 TCP header in place with direct
//! packet access (a few loads, no helper calls) so that ordinary traffic pays almost nothing;
//! everything else, and every packet that needs its fields, goes through `parse_tcp`, which
//! reads with `bpf_skb_load_bytes` and so also copes with headers outside the linear area.

use aya_ebpf::programs::TcContext;
use seqwatch_common::synack::{Counter, FAMILY_IPV4, FAMILY_IPV6};

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// QinQ: an 802.1ad tag then an 802.1Q tag. A third tag is refused, not walked.
const MAX_VLAN_TAGS: usize = 2;
/// Hop-by-hop, routing, destination options (twice), fragment, AH, and room to spare.
const MAX_IPV6_EXT_HEADERS: usize = 8;

const IPPROTO_TCP: u8 = 6;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;

/// Why a packet was not handed to a detector.
pub enum Skip {
    /// Not TCP over IP: nothing to count.
    NotTcp,
    /// Counted under this counter (a parse failure, or a non-first fragment).
    Counted(Counter),
}

/// The IP and TCP fields a detector needs, copied out of the packet. Laid out without padding
/// and 8-byte aligned, so that copies of it and of its addresses are a few wide moves: the
/// BPF backend turns byte-wise copies and zeroing into calls to byte loops.
#[repr(C, align(8))]
pub struct TcpPacket {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// The fixed 20-byte TCP header.
    pub tcp: [u8; 20],
    pub family: u8,
    pub ttl: u8,
    _pad: [u8; 2],
    /// Offset of the TCP header from the start of the frame.
    pub tcp_offset: usize,
    /// Offset just past the IP payload (from the IP length: Ethernet padding excluded).
    pub ip_end: usize,
}

impl TcpPacket {
    pub const EMPTY: TcpPacket = TcpPacket {
        saddr: [0; 16],
        daddr: [0; 16],
        tcp: [0; 20],
        family: 0,
        ttl: 0,
        _pad: [0; 2],
        tcp_offset: 0,
        ip_end: 0,
    };

    pub fn flags(&self) -> u8 {
        self.tcp[13]
    }

    /// Length of the TCP options in bytes (0..=40), valid after `parse_tcp` checked it.
    pub fn options_len(&self) -> usize {
        usize::from(self.tcp[12] >> 4) * 4 - 20
    }

    /// TCP payload bytes, as the IP length says (0 if the lengths disagree).
    pub fn payload_len(&self) -> usize {
        self.ip_end
            .saturating_sub(self.tcp_offset + usize::from(self.tcp[12] >> 4) * 4)
    }
}

/// What the fast path reads of a plain TCP header, in place.
#[derive(Clone, Copy)]
pub struct PlainTcp {
    pub flags: u8,
    /// Source port << 16 | destination port.
    pub ports: u32,
}

/// The flags and ports of an untagged IPv4 (IHL 5, not a fragment) or IPv6 (no extension
/// headers) TCP packet whose headers lie in the linear area, or `None` when the packet needs
/// the full parser. `Some(None)` means "certainly not TCP".
#[inline(always)]
pub fn plain_tcp(ctx: &TcContext) -> Option<Option<PlainTcp>> {
    let data = ctx.data();
    let end = ctx.data_end();
    // Ethernet + IPv4 + TCP up to the flags byte; IPv6 checks its longer prefix below.
    if data + ETH_HLEN + 20 + 14 > end {
        return None;
    }
    // SAFETY: bounds checked above against data_end, as the verifier requires.
    let byte = |offset: usize| unsafe { *((data + offset) as *const u8) };
    // SAFETY: as above; the TCP header's first four bytes lie before its flags byte.
    let word = |offset: usize| unsafe {
        u32::from_be(core::ptr::read_unaligned((data + offset) as *const u32))
    };
    let ethertype = u16::from_be_bytes([byte(12), byte(13)]);
    match ethertype {
        ETH_P_IPV4 => {
            let ihl_is_5 = byte(ETH_HLEN) == 0x45;
            let fragment =
                (u16::from_be_bytes([byte(ETH_HLEN + 6), byte(ETH_HLEN + 7)]) & 0x1fff) != 0;
            if !ihl_is_5 || fragment {
                return None;
            }
            if byte(ETH_HLEN + 9) != IPPROTO_TCP {
                return Some(None);
            }
            plain_at(
                byte(ETH_HLEN + 20 + 12),
                byte(ETH_HLEN + 20 + 13),
                word(ETH_HLEN + 20),
            )
        }
        ETH_P_IPV6 => {
            if data + ETH_HLEN + 40 + 14 > end {
                return None;
            }
            if byte(ETH_HLEN) >> 4 != 6 || byte(ETH_HLEN + 6) != IPPROTO_TCP {
                return None;
            }
            plain_at(
                byte(ETH_HLEN + 40 + 12),
                byte(ETH_HLEN + 40 + 13),
                word(ETH_HLEN + 40),
            )
        }
        ETH_P_8021Q | ETH_P_8021AD => None,
        _ => Some(None),
    }
}

/// For a packet `plain_tcp` read in place: the low 32 bits of the source address and the
/// ports word (source port << 16 | destination port), read in place too.
#[inline(always)]
pub fn plain_source_and_ports(ctx: &TcContext) -> Option<(u32, u32)> {
    let data = ctx.data();
    let end = ctx.data_end();
    if data + ETH_HLEN + 40 + 4 > end {
        // Shorter than an IPv6 header plus ports: IPv4 only, checked below.
        if data + ETH_HLEN + 20 + 4 > end {
            return None;
        }
    }
    // SAFETY: every offset read below was bounds-checked against data_end for its family.
    let word = |offset: usize| unsafe {
        u32::from_be(core::ptr::read_unaligned((data + offset) as *const u32))
    };
    // SAFETY: offset 12..14 lies within the checked range.
    let ethertype = unsafe { u16::from_be(core::ptr::read_unaligned((data + 12) as *const u16)) };
    match ethertype {
        ETH_P_IPV4 => Some((word(ETH_HLEN + 12), word(ETH_HLEN + 20))),
        ETH_P_IPV6 if data + ETH_HLEN + 40 + 4 <= end => {
            Some((word(ETH_HLEN + 20), word(ETH_HLEN + 40)))
        }
        _ => None,
    }
}

/// For a packet `plain_tcp` read in place: the low 32 bits of the destination address, read
/// in place too.
#[inline(always)]
pub fn plain_destination(ctx: &TcContext) -> Option<u32> {
    let data = ctx.data();
    let end = ctx.data_end();
    if data + ETH_HLEN > end {
        return None;
    }
    // SAFETY: offset 12..14 lies within the checked range.
    let ethertype = unsafe { u16::from_be(core::ptr::read_unaligned((data + 12) as *const u16)) };
    let offset = match ethertype {
        ETH_P_IPV4 => ETH_HLEN + 16,
        ETH_P_IPV6 => ETH_HLEN + 36,
        _ => return None,
    };
    if data + offset + 4 > end {
        return None;
    }
    // SAFETY: bounds-checked against data_end just above.
    Some(unsafe { u32::from_be(core::ptr::read_unaligned((data + offset) as *const u32)) })
}

/// The IP and TCP fields of a packet `plain_tcp` classified, copied in place (no helper
/// calls), or `None` when the packet needs `parse_tcp` after all.
#[inline(always)]
pub fn read_plain_tcp(ctx: &TcContext) -> Option<TcpPacket> {
    let data = ctx.data();
    let end = ctx.data_end();
    // Ethernet + IPv4 + the fixed TCP header; IPv6 checks its longer prefix below.
    if data + ETH_HLEN + 20 + 20 > end {
        return None;
    }
    // SAFETY: every offset read is below the bound checked for its family.
    let byte = |offset: usize| unsafe { *((data + offset) as *const u8) };
    let mut packet = TcpPacket::EMPTY;
    match u16::from_be_bytes([byte(12), byte(13)]) {
        ETH_P_IPV4 => {
            let fragment = u16::from_be_bytes([byte(ETH_HLEN + 6), byte(ETH_HLEN + 7)]) & 0x1fff;
            if byte(ETH_HLEN) != 0x45 || fragment != 0 || byte(ETH_HLEN + 9) != IPPROTO_TCP {
                return None;
            }
            packet.family = FAMILY_IPV4;
            packet.ttl = byte(ETH_HLEN + 8);
            packet.ip_end = ETH_HLEN
                + usize::from(u16::from_be_bytes([byte(ETH_HLEN + 2), byte(ETH_HLEN + 3)]));
            for i in 0..4 {
                packet.saddr[i] = byte(ETH_HLEN + 12 + i);
                packet.daddr[i] = byte(ETH_HLEN + 16 + i);
            }
            packet.tcp_offset = ETH_HLEN + 20;
        }
        ETH_P_IPV6 => {
            if data + ETH_HLEN + 40 + 20 > end
                || byte(ETH_HLEN) >> 4 != 6
                || byte(ETH_HLEN + 6) != IPPROTO_TCP
            {
                return None;
            }
            packet.family = FAMILY_IPV6;
            packet.ttl = byte(ETH_HLEN + 7);
            packet.ip_end = ETH_HLEN
                + 40
                + usize::from(u16::from_be_bytes([byte(ETH_HLEN + 4), byte(ETH_HLEN + 5)]));
            for i in 0..16 {
                packet.saddr[i] = byte(ETH_HLEN + 8 + i);
                packet.daddr[i] = byte(ETH_HLEN + 24 + i);
            }
            packet.tcp_offset = ETH_HLEN + 40;
        }
        _ => return None,
    }
    for i in 0..20 {
        packet.tcp[i] = byte(packet.tcp_offset + i);
    }
    let header_len = usize::from(packet.tcp[12] >> 4) * 4;
    if header_len < 20 || packet.tcp_offset + header_len > ctx.len() as usize {
        return None;
    }
    Some(packet)
}

/// A bad data offset is left to the full parser, which counts it.
#[inline(always)]
fn plain_at(data_offset: u8, flags: u8, ports: u32) -> Option<Option<PlainTcp>> {
    if data_offset >> 4 < 5 {
        None
    } else {
        Some(Some(PlainTcp { flags, ports }))
    }
}

/// Walks the headers of any frame down to TCP.
#[inline(always)]
pub fn parse_tcp(ctx: &TcContext) -> Result<TcpPacket, Skip> {
    let (ethertype, l3) = walk_vlan_tags(ctx)?;
    let mut packet = match ethertype {
        ETH_P_IPV4 => parse_ipv4(ctx, l3)?,
        ETH_P_IPV6 => parse_ipv6(ctx, l3)?,
        _ => return Err(Skip::NotTcp),
    };
    packet.tcp = load(ctx, packet.tcp_offset)?;
    let header_len = usize::from(packet.tcp[12] >> 4) * 4;
    if header_len < 20 {
        return Err(Skip::Counted(Counter::ParseTcpBadDataOffset));
    }
    if packet.tcp_offset + header_len > ctx.len() as usize {
        return Err(Skip::Counted(Counter::ParseTruncated));
    }
    Ok(packet)
}

#[inline(always)]
fn walk_vlan_tags(ctx: &TcContext) -> Result<(u16, usize), Skip> {
    let mut ethertype = u16::from_be_bytes(load(ctx, 12)?);
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            return Ok((ethertype, offset));
        }
        ethertype = u16::from_be_bytes(load(ctx, offset + 2)?);
        offset += 4;
    }
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        return Err(Skip::Counted(Counter::ParseVlanTooDeep));
    }
    Ok((ethertype, offset))
}

#[inline(always)]
fn parse_ipv4(ctx: &TcContext, offset: usize) -> Result<TcpPacket, Skip> {
    let header: [u8; 20] = load(ctx, offset)?;
    if header[0] >> 4 != 4 {
        return Err(Skip::Counted(Counter::ParseIpVersionMismatch));
    }
    let ihl = usize::from(header[0] & 0x0f);
    if ihl < 5 {
        return Err(Skip::Counted(Counter::ParseIpv4BadIhl));
    }
    if u16::from_be_bytes([header[6], header[7]]) & 0x1fff != 0 {
        return Err(Skip::Counted(Counter::NonFirstFragment));
    }
    if header[9] != IPPROTO_TCP {
        return Err(Skip::NotTcp);
    }
    let mut packet = TcpPacket {
        family: FAMILY_IPV4,
        ttl: header[8],
        tcp_offset: offset + ihl * 4,
        ip_end: offset + usize::from(u16::from_be_bytes([header[2], header[3]])),
        ..TcpPacket::EMPTY
    };
    packet.saddr[..4].copy_from_slice(&header[12..16]);
    packet.daddr[..4].copy_from_slice(&header[16..20]);
    Ok(packet)
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, offset: usize) -> Result<TcpPacket, Skip> {
    let header: [u8; 40] = load(ctx, offset)?;
    if header[0] >> 4 != 6 {
        return Err(Skip::Counted(Counter::ParseIpVersionMismatch));
    }
    let mut packet = TcpPacket {
        family: FAMILY_IPV6,
        ttl: header[7],
        ip_end: offset + 40 + usize::from(u16::from_be_bytes([header[4], header[5]])),
        ..TcpPacket::EMPTY
    };
    packet.saddr.copy_from_slice(&header[8..24]);
    packet.daddr.copy_from_slice(&header[24..40]);
    packet.tcp_offset = skip_ipv6_extensions(ctx, header[6], offset + 40)?;
    Ok(packet)
}

/// Returns the offset of the TCP header after the extension-header chain.
#[inline(always)]
fn skip_ipv6_extensions(ctx: &TcContext, first: u8, start: usize) -> Result<usize, Skip> {
    let mut next = first;
    let mut offset = start;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_TCP => return Ok(offset),
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                let [next_header, len]: [u8; 2] = load(ctx, offset)?;
                next = next_header;
                offset += (usize::from(len) + 1) * 8;
            }
            IPV6_AUTH => {
                let [next_header, len]: [u8; 2] = load(ctx, offset)?;
                next = next_header;
                offset += (usize::from(len) + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let fragment: [u8; 4] = load(ctx, offset)?;
                if u16::from_be_bytes([fragment[2], fragment[3]]) >> 3 != 0 {
                    return Err(Skip::Counted(Counter::NonFirstFragment));
                }
                next = fragment[0];
                offset += 8;
            }
            _ => return Err(Skip::NotTcp),
        }
    }
    if next == IPPROTO_TCP {
        Ok(offset)
    } else {
        Err(Skip::Counted(Counter::ParseIpv6ExtTooDeep))
    }
}

/// Copies an address as two 8-byte words: a plain array copy can become a call to a byte
/// loop on BPF. Both sides must be 8-byte aligned, as TcpPacket's and the records' are.
#[inline(always)]
pub fn copy_address(dst: *mut [u8; 16], src: &[u8; 16]) {
    let src = src.as_ptr().cast::<u64>();
    let dst = dst.cast::<u64>();
    // SAFETY: both are 16 bytes, 8-byte aligned (see above), and do not overlap.
    unsafe {
        dst.write(src.read());
        dst.add(1).write(src.add(1).read());
    }
}

#[inline(always)]
fn load<T>(ctx: &TcContext, offset: usize) -> Result<T, Skip> {
    ctx.load(offset)
        .map_err(|_| Skip::Counted(Counter::ParseTruncated))
}
