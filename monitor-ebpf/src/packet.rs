//! Header walking shared by the detectors: Ethernet (802.1Q/802.1ad tags), IPv4 (IHL checked),
//! IPv6 (extension headers walked, non-first fragments skipped), TCP (data offset checked).
//!
//! Two paths: `plain_tcp` reads an untagged IPv4/IPv6 TCP header in place with direct
//! packet access (a few loads, no helper calls) so that ordinary traffic pays almost nothing;
//! everything else, and every packet that needs its fields, goes through `parse_tcp`, which
//! reads with `bpf_skb_load_bytes` and so also copes with headers outside the linear area.

use core::{arch::asm, mem::MaybeUninit};

use aya_ebpf::{macros::map, maps::PerCpuArray, programs::TcContext};
use seqwatch_common::{
    Direction,
    packet::Counter,
    synack::{FAMILY_IPV4, FAMILY_IPV6},
};

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

/// A 32-bit mix of a 4-tuple as the fast path reads it in place: the remote address's low
/// word and both ports in one word. The open-handshake and TLS filters tag their slots with
/// it, each marking bits of its own.
#[inline(always)]
pub fn tuple_mix(remote_word: u32, ports: u32) -> u32 {
    let hash = remote_word.wrapping_mul(0x9e37_79b1) ^ ports;
    let hash = hash.wrapping_mul(0x85eb_ca6b);
    hash ^ (hash >> 15)
}

/// Why a packet was not handed to a detector.
pub enum Skip {
    /// Not TCP over IP: nothing to count.
    NotTcp,
    /// Counted under this counter (a parse failure, or a non-first fragment).
    Counted(Counter),
}

/// An address as it is on the wire (network byte order), IPv4 in the first four bytes and
/// the rest zero. Two words, not 16 bytes: the BPF backend copies byte arrays a byte at a time.
pub type Address = [u64; 2];

/// The IP and TCP fields a detector needs, read out of the packet once. Word-sized fields, so
/// that writing and copying it are a few moves.
#[repr(C)]
pub struct TcpPacket {
    pub saddr: Address,
    pub daddr: Address,
    pub seq: u32,
    pub ack: u32,
    pub sport: u16,
    pub dport: u16,
    pub window: u16,
    pub flags: u8,
    /// TCP header length in bytes: 20..=60 once the parser has checked it.
    pub header_len: u8,
    pub family: u8,
    pub ttl: u8,
    /// Offset of the TCP header from the start of the frame.
    pub tcp_offset: usize,
    /// Offset just past the IP payload (from the IP length: Ethernet padding excluded).
    pub ip_end: usize,
}

impl TcpPacket {
    /// Length of the TCP options in bytes (0..=40).
    pub fn options_len(&self) -> usize {
        usize::from(self.header_len) - 20
    }

    /// TCP payload bytes, as the IP length says (0 if the lengths disagree).
    pub fn payload_len(&self) -> usize {
        self.ip_end
            .saturating_sub(self.tcp_offset + usize::from(self.header_len))
    }

    /// The low 32 bits of an address of this packet, as the fast path reads them in place
    /// (big-endian): an IPv4 address whole, an IPv6 address's last four bytes.
    pub fn address_word(&self, address: &Address) -> u32 {
        if self.family == FAMILY_IPV4 {
            u32::from_be(address[0] as u32)
        } else {
            u32::from_be((address[1] >> 32) as u32)
        }
    }
}

/// A connection as this host sees it (local = this host's end: on ingress the destination).
/// A hash-map key: word-sized fields and no padding, so that building one is a few stores.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FlowKey {
    pub local: Address,
    pub remote: Address,
    pub local_port: u16,
    pub remote_port: u16,
    pub family: u32,
}

impl FlowKey {
    #[inline(always)]
    pub fn oriented(tcp: &TcpPacket, direction: Direction) -> Self {
        match direction {
            Direction::Ingress => FlowKey {
                local: tcp.daddr,
                remote: tcp.saddr,
                local_port: tcp.dport,
                remote_port: tcp.sport,
                family: u32::from(tcp.family),
            },
            Direction::Egress => FlowKey {
                local: tcp.saddr,
                remote: tcp.daddr,
                local_port: tcp.sport,
                remote_port: tcp.dport,
                family: u32::from(tcp.family),
            },
        }
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
    // SAFETY (the three readers): bounds checked above against data_end, as the verifier
    // requires; the TCP header's first four bytes lie before its flags byte.
    let byte = |offset: usize| unsafe { *((data + offset) as *const u8) };
    let half = |offset: usize| unsafe { u16::from_be(load_u16(data + offset)) };
    let word = |offset: usize| unsafe { u32::from_be(load_u32(data + offset)) };
    let ethertype = half(12);
    match ethertype {
        ETH_P_IPV4 => {
            let ihl_is_5 = byte(ETH_HLEN) == 0x45;
            let fragment = (half(ETH_HLEN + 6) & 0x1fff) != 0;
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
    let word = |offset: usize| unsafe { u32::from_be(load_u32(data + offset)) };
    // SAFETY: offset 12..14 lies within the checked range.
    let ethertype = unsafe { u16::from_be(load_u16(data + 12)) };
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
    let ethertype = unsafe { u16::from_be(load_u16(data + 12)) };
    let offset = match ethertype {
        ETH_P_IPV4 => ETH_HLEN + 16,
        ETH_P_IPV6 => ETH_HLEN + 36,
        _ => return None,
    };
    if data + offset + 4 > end {
        return None;
    }
    // SAFETY: bounds-checked against data_end just above.
    Some(unsafe { u32::from_be(load_u32(data + offset)) })
}

/// Reads the IP and TCP fields of a packet `plain_tcp` classified into `out`, in place with
/// word loads (no helper calls); false when the packet needs `parse_tcp` after all.
#[inline(always)]
pub fn read_plain_tcp(ctx: &TcContext, out: &mut MaybeUninit<TcpPacket>) -> bool {
    let data = ctx.data();
    let end = ctx.data_end();
    // Ethernet + IPv4 + the fixed TCP header; IPv6 checks its longer prefix below.
    if data + ETH_HLEN + 20 + 20 > end {
        return false;
    }
    // SAFETY (the four readers): every offset read is below the bound checked for its family.
    let byte = |offset: usize| unsafe { *((data + offset) as *const u8) };
    let half = |offset: usize| unsafe { u16::from_be(load_u16(data + offset)) };
    let word = |offset: usize| unsafe { load_u32(data + offset) };
    let wide = |offset: usize| unsafe { load_u64(data + offset) };
    let packet = out.as_mut_ptr();
    let tcp_offset = match half(12) {
        ETH_P_IPV4 => {
            let fragment = half(ETH_HLEN + 6) & 0x1fff;
            if byte(ETH_HLEN) != 0x45 || fragment != 0 || byte(ETH_HLEN + 9) != IPPROTO_TCP {
                return false;
            }
            // SAFETY: `packet` is `out`'s, writable.
            unsafe {
                (*packet).family = FAMILY_IPV4;
                (*packet).ttl = byte(ETH_HLEN + 8);
                (*packet).ip_end = ETH_HLEN + usize::from(half(ETH_HLEN + 2));
                (*packet).saddr = [u64::from(word(ETH_HLEN + 12)), 0];
                (*packet).daddr = [u64::from(word(ETH_HLEN + 16)), 0];
            }
            ETH_HLEN + 20
        }
        ETH_P_IPV6 => {
            if data + ETH_HLEN + 40 + 20 > end
                || byte(ETH_HLEN) >> 4 != 6
                || byte(ETH_HLEN + 6) != IPPROTO_TCP
            {
                return false;
            }
            // SAFETY: as above.
            unsafe {
                (*packet).family = FAMILY_IPV6;
                (*packet).ttl = byte(ETH_HLEN + 7);
                (*packet).ip_end = ETH_HLEN + 40 + usize::from(half(ETH_HLEN + 4));
                (*packet).saddr = [wide(ETH_HLEN + 8), wide(ETH_HLEN + 16)];
                (*packet).daddr = [wide(ETH_HLEN + 24), wide(ETH_HLEN + 32)];
            }
            ETH_HLEN + 40
        }
        _ => return false,
    };
    let header = [
        word(tcp_offset),
        word(tcp_offset + 4),
        word(tcp_offset + 8),
        word(tcp_offset + 12),
    ];
    // SAFETY: as above.
    unsafe { write_tcp_fields(packet, tcp_offset, header) };
    // SAFETY: written just above.
    let header_len = usize::from(unsafe { (*packet).header_len });
    header_len >= 20 && tcp_offset + header_len <= ctx.len() as usize
}

/// Packet loads of 2, 4 and 8 bytes as they lie in memory, each one instruction at any
/// alignment. `read_unaligned` would become byte loads: the BPF backend assumes that misaligned
/// loads fault, but the kernel allows them on packet data wherever the CPU does (x86-64,
/// arm64), and its verifier checks each against the packet bounds.
///
/// # Safety
/// `address` must be a packet pointer whose bytes were checked against `data_end`.
macro_rules! packet_load {
    ($name:ident, $ty:ty, $size:literal) => {
        #[inline(always)]
        unsafe fn $name(address: usize) -> $ty {
            let value: u64;
            // SAFETY: the caller's.
            unsafe {
                asm!(
                    concat!("{0} = *(", $size, " *)({1} + 0)"),
                    lateout(reg) value,
                    in(reg) address,
                    options(pure, readonly, nostack, preserves_flags),
                );
            }
            value as $ty
        }
    };
}
packet_load!(load_u16, u16, "u16");
packet_load!(load_u32, u32, "u32");
packet_load!(load_u64, u64, "u64");

/// A bad data offset is left to the full parser, which counts it.
#[inline(always)]
fn plain_at(data_offset: u8, flags: u8, ports: u32) -> Option<Option<PlainTcp>> {
    if data_offset >> 4 < 5 {
        None
    } else {
        Some(Some(PlainTcp { flags, ports }))
    }
}

/// Walks the headers of any frame down to TCP, and reads their fields into `out`.
#[inline(always)]
pub fn parse_tcp(ctx: &TcContext, out: &mut MaybeUninit<TcpPacket>) -> Result<(), Skip> {
    let packet = out.as_mut_ptr();
    let (ethertype, l3) = walk_vlan_tags(ctx)?;
    let tcp_offset = match ethertype {
        ETH_P_IPV4 => parse_ipv4(ctx, l3, packet)?,
        ETH_P_IPV6 => parse_ipv6(ctx, l3, packet)?,
        _ => return Err(Skip::NotTcp),
    };
    // SAFETY: `packet` is `out`'s, writable.
    let header_len = unsafe {
        write_tcp_fields(packet, tcp_offset, load(ctx, tcp_offset)?);
        usize::from((*packet).header_len)
    };
    if header_len < 20 {
        return Err(Skip::Counted(Counter::ParseTcpBadDataOffset));
    }
    if tcp_offset + header_len > ctx.len() as usize {
        return Err(Skip::Counted(Counter::ParseTruncated));
    }
    Ok(())
}

/// Writes the TCP fields from the header's first 16 bytes, as four words in memory order.
///
/// # Safety
/// `packet` must be valid for writes.
#[inline(always)]
unsafe fn write_tcp_fields(packet: *mut TcpPacket, tcp_offset: usize, header: [u32; 4]) {
    let ports = u32::from_be(header[0]);
    let [data_offset, flags, window_high, window_low] = header[3].to_ne_bytes();
    // SAFETY: the caller's.
    unsafe {
        (*packet).tcp_offset = tcp_offset;
        (*packet).sport = (ports >> 16) as u16;
        (*packet).dport = ports as u16;
        (*packet).seq = u32::from_be(header[1]);
        (*packet).ack = u32::from_be(header[2]);
        (*packet).window = u16::from_be_bytes([window_high, window_low]);
        (*packet).flags = flags;
        (*packet).header_len = (data_offset >> 4) * 4;
    }
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

/// Reads an IPv4 header's fields into `packet`; returns the TCP header's offset.
#[inline(always)]
fn parse_ipv4(ctx: &TcContext, offset: usize, packet: *mut TcpPacket) -> Result<usize, Skip> {
    // Words as they lie in memory: loaded into an aligned buffer, then taken apart.
    let header: [u32; 5] = load(ctx, offset)?;
    let [version_ihl, _, length_high, length_low] = header[0].to_ne_bytes();
    let [_, _, fragment_high, fragment_low] = header[1].to_ne_bytes();
    let [ttl, protocol, ..] = header[2].to_ne_bytes();
    if version_ihl >> 4 != 4 {
        return Err(Skip::Counted(Counter::ParseIpVersionMismatch));
    }
    let ihl = usize::from(version_ihl & 0x0f);
    if ihl < 5 {
        return Err(Skip::Counted(Counter::ParseIpv4BadIhl));
    }
    if u16::from_be_bytes([fragment_high, fragment_low]) & 0x1fff != 0 {
        return Err(Skip::Counted(Counter::NonFirstFragment));
    }
    if protocol != IPPROTO_TCP {
        return Err(Skip::NotTcp);
    }
    // SAFETY: the caller's `packet` is writable.
    unsafe {
        (*packet).family = FAMILY_IPV4;
        (*packet).ttl = ttl;
        (*packet).ip_end = offset + usize::from(u16::from_be_bytes([length_high, length_low]));
        (*packet).saddr = [u64::from(header[3]), 0];
        (*packet).daddr = [u64::from(header[4]), 0];
    }
    Ok(offset + ihl * 4)
}

/// Reads an IPv6 header's fields into `packet`; returns the TCP header's offset after the
/// extension-header chain.
#[inline(always)]
fn parse_ipv6(ctx: &TcContext, offset: usize, packet: *mut TcpPacket) -> Result<usize, Skip> {
    let header: [u64; 5] = load(ctx, offset)?;
    let [
        version,
        _,
        _,
        _,
        length_high,
        length_low,
        next_header,
        hop_limit,
    ] = header[0].to_ne_bytes();
    if version >> 4 != 6 {
        return Err(Skip::Counted(Counter::ParseIpVersionMismatch));
    }
    // SAFETY: the caller's `packet` is writable.
    unsafe {
        (*packet).family = FAMILY_IPV6;
        (*packet).ttl = hop_limit;
        (*packet).ip_end = offset + 40 + usize::from(u16::from_be_bytes([length_high, length_low]));
        (*packet).saddr = [header[1], header[2]];
        (*packet).daddr = [header[3], header[4]];
    }
    skip_ipv6_extensions(ctx, next_header, offset + 40)
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

/// Copies an address into a record's 16 bytes as two 8-byte words: a plain array copy can
/// become a call to a byte loop on BPF. The record's field must be 8-byte aligned, as the
/// records' address fields are.
#[inline(always)]
pub fn copy_address(dst: *mut [u8; 16], src: &Address) {
    let dst = dst.cast::<u64>();
    // SAFETY: 16 bytes, 8-byte aligned (see above).
    unsafe {
        dst.write(src[0]);
        dst.add(1).write(src[1]);
    }
}

#[inline(always)]
fn load<T>(ctx: &TcContext, offset: usize) -> Result<T, Skip> {
    ctx.load(offset)
        .map_err(|_| Skip::Counted(Counter::ParseTruncated))
}

#[map]
static PACKET_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Adds one to a per-CPU counter and returns the new per-CPU value.
#[inline(always)]
pub fn count(counter: Counter) -> u64 {
    match PACKET_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, and TC programs do not nest on one CPU.
        Some(slot) => unsafe {
            *slot += 1;
            *slot
        },
        None => 0,
    }
}
