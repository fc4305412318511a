//! SYN-ACK origin check, on while the daemon samples ingress SYN-ACKs: anyone can send this
//! host a SYN-ACK with any ISN "from" any server, so an ingress SYN-ACK is sampled only if it
//! answers a SYN that left by the same interface on the same 4-tuple (one this host sent or, on
//! a gateway, forwarded), acking that SYN's ISN + 1 (or past its Fast Open data). Every other
//! one is refused: counted, and
//! reported as `synack_to_listener` (to a listening port) or `unsolicited_synack`.
//!
//! Each SYN leaving by an egress hook keeps its expected answer in a direct-mapped table
//! (`SYN_RECORDS`): one 16-byte slot per seeded jhash of its 4-tuple and interface, in place of
//! whatever the slot held. A slot holds the hash (so another 4-tuple's record never matches)
//! and the ISN + 1, in one word written whole, then the first answer's seq: its retransmission
//! is sampled again (the scorer drops it as one), another answer refused. A flood of SYNs can only
//! displace records, making their answers miss (refused, counted), never make a forged answer
//! match: that needs the SYN's 4-tuple, interface and ISN, which an off-path host does not
//! see. On a gateway, a host that sends SYNs through it chose their ISNs (docs/scorer.md,
//! "Which SYN-ACKs are trusted").
//!
//! Egress SYN-ACKs are this host's own answers and are sampled as before, except, with the
//! check on, those it forwarded from an interface where SYN-ACKs are judged on the way in
//! (`JUDGED_AT_INGRESS`): each was sampled or refused there. One forwarded from an interface
//! without an ingress sampler is sampled as it leaves, as egress-only sampling does.

use aya_ebpf::{
    EbpfContext,
    bindings::__sk_buff,
    macros::map,
    maps::{Array, HashMap},
    programs::TcContext,
};
use seqwatch_common::{
    Direction,
    handshake::{AnomalyKind, jhash},
    packet::Counter,
    synack_origin::{
        JUDGED_INTERFACES, JUDGES_SYNACKS, RECORD_KEY_WORDS, SYN_RECORD_SLOTS, slot_of,
    },
};

use crate::{
    handshake,
    packet::{self, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TcpPacket},
    tcp_events,
};

/// Set by the daemon at load (`EbpfLoader::override_global`) when it samples ingress
/// SYN-ACKs: the records' hash seed, random and non-zero, so that a remote host cannot aim
/// SYNs at a given record. The object's own 0 turns the check off; the verifier reads this
/// frozen value as a constant and leaves the check's code out of the programs, so the default
/// configuration (egress only) does not pay for it.
#[unsafe(no_mangle)]
static SYNACK_ORIGIN_SEED: u32 = 0;

/// `SynRecord::answer`: bits 0-31 the answer's seq, bit 32 set once answered, and from bit 33
/// the bytes of data the SYN carried (TCP Fast Open), which the answer acks too if the server
/// took them.
const ANSWERED: u64 = 1 << 32;
const DATA_SHIFT: u32 = 33;

#[repr(C)]
#[derive(Clone, Copy)]
struct SynRecord {
    /// The key's hash (bit 0 set) << 32 | the SYN's ISN + 1; 0: empty.
    expected: u64,
    /// The SYN's data bytes << `DATA_SHIFT`, and once answered `ANSWERED` | the answer's seq.
    answer: u64,
}

#[map]
static SYN_RECORDS: Array<SynRecord> = Array::with_max_entries(SYN_RECORD_SLOTS, 0);

/// The interfaces (by index) whose ingress classifier judges what comes in, and what it judges
/// (`JUDGES_SYNACKS`, `JUDGES_SEGMENTS`): written by userspace as it attaches and detaches.
#[map]
static JUDGED_AT_INGRESS: HashMap<u32, u32> = HashMap::with_max_entries(JUDGED_INTERFACES, 0);

/// Whether the SYN-ACK sampler takes this SYN-ACK, given what was judged of it on the way in
/// ([`judged_on_the_way_in`]; 0 on ingress). With the check off: egress ones only (an ingress
/// classifier loaded without it, by a tool, samples nothing). With it on: the egress ones not
/// judged on the way in, and the ingress ones that answer a recorded SYN.
#[inline(always)]
pub fn admits(ctx: &TcContext, direction: Direction, tcp: &TcpPacket, judged: u32) -> bool {
    match direction {
        Direction::Egress if judged & JUDGES_SYNACKS != 0 => {
            packet::count(Counter::SynAcksForwarded);
            false
        }
        Direction::Egress => true,
        Direction::Ingress => {
            let seed = seed();
            seed != 0 && answers_a_syn(ctx, tcp, seed)
        }
    }
}

/// What an ingress classifier judged of a packet leaving now: nothing for one this host built,
/// or one that came in by an interface without it. Always nothing with the check off, which
/// leaves this out of the programs (see `SYNACK_ORIGIN_SEED`).
#[inline(always)]
pub fn judged_on_the_way_in(ctx: &TcContext) -> u32 {
    if seed() == 0 {
        return 0;
    }
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: the context of a TC program is a valid __sk_buff.
    let came_in_by = unsafe { (*skb).ingress_ifindex };
    if came_in_by == 0 {
        return 0;
    }
    // SAFETY: a hash map value, read at once.
    unsafe { JUDGED_AT_INGRESS.get(&came_in_by) }.map_or(0, |&judged| judged)
}

/// Records a SYN leaving by this interface, while the check is on.
#[inline(always)]
pub fn record_syn(ctx: &TcContext, tcp: &TcpPacket) {
    let seed = seed();
    if seed != 0 && is_syn(tcp.flags) {
        record(ctx, tcp, seed);
    }
}

/// SYN set; ACK, RST and FIN clear (ECN bits and data allowed: ECN setup, Fast Open).
#[inline(always)]
pub fn is_syn(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN
}

#[inline(always)]
fn seed() -> u32 {
    // SAFETY: a static, read in place; volatile, or the compiler would fold in the object's 0.
    unsafe { core::ptr::read_volatile(&raw const SYNACK_ORIGIN_SEED) }
}

/// Keeps the answer the SYN expects, in place of whatever the slot held. Written without
/// reading the slot first: a new connection's slot is a cache miss, which a store leaves to
/// the CPU's store buffer and a load waits for. (A retransmitted SYN writes its record again,
/// and a displaced record is only known by its answer's refusal.)
#[inline(never)]
fn record(ctx: &TcContext, tcp: &TcpPacket, seed: u32) {
    let place = Place::of(ctx, tcp, Direction::Egress, seed);
    let Some(record) = SYN_RECORDS.get_ptr_mut(place.slot) else {
        return;
    };
    packet::count(Counter::SynsRecorded);
    // SAFETY: an array slot, valid for the program run. Each word is read and written whole
    // (8-byte aligned): a record torn by another CPU's write can make an answer miss, never
    // match another 4-tuple's or another ISN's.
    unsafe {
        let data = (tcp.payload_len() as u64) << DATA_SHIFT;
        core::ptr::write_volatile(&raw mut (*record).answer, data);
        let expected = place.tag | u64::from(tcp.seq.wrapping_add(1));
        core::ptr::write_volatile(&raw mut (*record).expected, expected);
    }
}

/// Whether an ingress SYN-ACK answers the SYN recorded for its 4-tuple and interface (acking
/// its ISN + 1, or past its Fast Open data too): the first answer, or a retransmission of it.
/// Reports it otherwise.
#[inline(never)]
fn answers_a_syn(ctx: &TcContext, tcp: &TcpPacket, seed: u32) -> bool {
    let place = Place::of(ctx, tcp, Direction::Ingress, seed);
    let answered = match SYN_RECORDS.get_ptr_mut(place.slot) {
        // SAFETY: as in `record`.
        Some(record) => unsafe {
            let expected = core::ptr::read_volatile(&raw const (*record).expected);
            let held = core::ptr::read_volatile(&raw const (*record).answer);
            let acked = tcp.ack.wrapping_sub(expected as u32);
            let data = (held >> DATA_SHIFT) as u32;
            if expected >> 32 != place.tag >> 32 || (acked != 0 && acked != data) {
                false
            } else if held & ANSWERED == 0 {
                let answer = held | ANSWERED | u64::from(tcp.seq);
                core::ptr::write_volatile(&raw mut (*record).answer, answer);
                true
            } else {
                held as u32 == tcp.seq
            }
        },
        None => false,
    };
    if !answered {
        refuse(ctx, tcp);
    }
    answered
}

/// Counts and reports a SYN-ACK that answers no recorded SYN.
#[inline(always)]
fn refuse(ctx: &TcContext, tcp: &TcpPacket) {
    packet::count(Counter::SynAcksUnsolicited);
    let kind = if tcp_events::listening(tcp.dport) {
        AnomalyKind::SynAckToListener
    } else {
        AnomalyKind::UnsolicitedSynAck
    };
    handshake::report_segment(ctx, Direction::Ingress, tcp, kind);
}

/// Where a 4-tuple's SYN record lives, and the hash that tags it.
struct Place {
    slot: u32,
    /// The hash with bit 0 set (it is also the slot's bit 0), in the high word: a record is
    /// then never 0, the empty slot's value.
    tag: u64,
}

impl Place {
    /// The place of the SYN's 4-tuple as it left (`Egress`), or of the SYN-ACK answering it
    /// (`Ingress`), and the interface either went through.
    #[inline(always)]
    fn of(ctx: &TcContext, tcp: &TcpPacket, direction: Direction, seed: u32) -> Self {
        let hash = jhash(&key_words(ctx, tcp, direction), seed);
        Place {
            slot: slot_of(hash),
            tag: u64::from(hash | 1) << 32,
        }
    }
}

/// This host's end, the remote end, the ports, the family and the interface.
#[inline(always)]
fn key_words(ctx: &TcContext, tcp: &TcpPacket, direction: Direction) -> [u32; RECORD_KEY_WORDS] {
    let (local, remote, local_port, remote_port) = match direction {
        Direction::Egress => (&tcp.saddr, &tcp.daddr, tcp.sport, tcp.dport),
        Direction::Ingress => (&tcp.daddr, &tcp.saddr, tcp.dport, tcp.sport),
    };
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: the context of a TC program is a valid __sk_buff.
    let ifindex = unsafe { (*skb).ifindex };
    let low = |word: u64| word as u32;
    let high = |word: u64| (word >> 32) as u32;
    [
        low(local[0]),
        high(local[0]),
        low(local[1]),
        high(local[1]),
        low(remote[0]),
        high(remote[0]),
        low(remote[1]),
        high(remote[1]),
        (u32::from(local_port) << 16) | u32::from(remote_port),
        u32::from(tcp.family),
        ifindex,
    ]
}
