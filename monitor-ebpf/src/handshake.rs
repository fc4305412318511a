//! Handshake anomaly tracker: stateless flag checks on every TCP segment that is not a plain
//! ACK, and a small per-4-tuple state (`table`) for handshakes to this host's listeners, so
//! that the third packet, retransmitted SYNs and SYN-ACKs, early data/FIN and handshake RSTs
//! can be judged. Every anomaly becomes one `AnomalyEvent` in its own ring buffer.
//!
//! What established traffic pays: a plain ACK (ACK set; SYN, FIN, RST clear) — every data
//! segment and pure ACK of an established connection — is only interesting as a handshake's
//! third packet, which arrives on ingress while a handshake to us is open. So egress plain ACKs
//! leave after the flags byte, and ingress ones after one read of a direct-mapped array
//! (`OPEN_HANDSHAKES`, inlined by the verifier: no helper call, no hash-map lookup) that holds a
//! tag of each 4-tuple with an open handshake. Only a tag match costs a state lookup. What that
//! misses, accepted because the alternative is a hash lookup per data segment:
//! - ACKs or data for a 4-tuple that never had a handshake (a SYN-cookie guess, or midstream
//!   traffic): no state exists, so there is nothing to judge them against anyway;
//! - the third packet of a handshake whose slot a newer handshake took over (a 1-in-65 536
//!   collision): its state stays "SYN-ACK sent" until its FIN or RST, which are looked up and
//!   complete it implicitly when they ack our SYN-ACK, so it yields no false anomaly;
//! - anything after completion except SYN, FIN and RST (in-window checks are the kernel's).

mod table;

use aya_ebpf::{
    EbpfContext,
    bindings::__sk_buff,
    cty::{c_long, c_void},
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_loop, bpf_skb_load_bytes},
    },
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
    programs::TcContext,
};
use seqwatch_common::{
    Direction,
    handshake::{ANOMALY_RINGBUF_BYTES, AnomalyEvent, AnomalyKind, HandshakeCounter},
};

use self::table::Place;
use crate::{
    packet::{self, FlowKey, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TCP_URG, TcpPacket},
    ringbuf,
};

/// Slots of the open-handshake filter: a power of two.
const FILTER_SLOTS: u32 = 1 << 16;
/// Slack for "right seq": a window, not an exact match (TFO data, a lost third ACK).
const SEQ_WINDOW: u32 = 1 << 16;
/// TCP options are at most 40 bytes, so at most 40 of them (all NOPs).
const MAX_OPTIONS: usize = 40;
const TCPOPT_END: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_FASTOPEN: u8 = 34;
/// RFC 7413's experimental encoding: kind 254 with the magic 0xF989.
const TCPOPT_EXPERIMENTAL: u8 = 254;

const SYN_SEEN: u16 = 0;
const SYNACK_SENT: u16 = 1;
const ESTABLISHED: u16 = 2;

/// Index 0: non-zero when userspace attached both directions, so that the stateful checks see
/// both halves of every handshake, and then the seed of the state table's hash (random). With
/// one direction only the stateless checks run.
#[map]
static HANDSHAKE_CONFIG: Array<u32> = Array::with_max_entries(1, 0);

/// Tag of the 4-tuple whose handshake is open in each slot, 0 for none.
#[map]
static OPEN_HANDSHAKES: Array<u32> = Array::with_max_entries(FILTER_SLOTS, 0);

#[map]
static ANOMALY_EVENTS: RingBuf = RingBuf::with_byte_size(ANOMALY_RINGBUF_BYTES, 0);

#[map]
static HANDSHAKE_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(HandshakeCounter::COUNT, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct Handshake {
    client_isn: u32,
    /// Our SYN-ACK's seq (our ISN) and ack, once sent.
    synack_seq: u32,
    synack_ack: u32,
    state: u16,
    /// The SYN carried TFO data: the server may send data before the third ACK.
    tfo: u16,
}

/// One segment, oriented: what the checks need.
struct Segment<'a> {
    tcp: &'a TcpPacket,
    direction: Direction,
    key: FlowKey,
    tag: u32,
    flags: u8,
    seq: u32,
    ack: u32,
    payload_len: usize,
}

/// Whether a packet that `packet::plain_tcp` read in place needs the full look: all
/// but plain ACKs, and those only on ingress while their 4-tuple may have a handshake open.
#[inline(always)]
pub fn worth_parsing(ctx: &TcContext, direction: Direction, flags: u8) -> bool {
    if !is_plain_ack(flags) {
        return true;
    }
    if direction == Direction::Egress {
        return false;
    }
    match packet::plain_source_and_ports(ctx) {
        Some((remote, ports)) => filter_contains(filter_tag(remote, ports)),
        None => true,
    }
}

/// Judges one parsed TCP segment: its flags always, and against the handshake state when
/// tracking is on. A subprogram of its own, so that its stack is not added to the parser's.
/// The oriented segment (flow key and tag) is built only where it is used: most segments
/// pass the stateless checks with tracking off.
#[inline(never)]
pub fn judge(ctx: &TcContext, direction: Direction, tcp: &TcpPacket) {
    let flags = tcp.flags;
    if is_plain_ack(flags)
        && (direction == Direction::Egress || !filter_contains(Segment::tag_of(tcp, direction)))
    {
        return;
    }
    if let Some(kind) = illegal_flags(flags) {
        report(ctx, &Segment::new(tcp, direction), kind, 0, 0);
        return;
    }
    let mut tfo = false;
    if flags & (TCP_SYN | TCP_ACK) == TCP_SYN && tcp.payload_len() > 0 {
        if !has_fastopen_option(ctx, tcp.tcp_offset + 20, tcp.options_len()) {
            let kind = AnomalyKind::SynWithData;
            report(ctx, &Segment::new(tcp, direction), kind, 0, 0);
            return;
        }
        count(HandshakeCounter::TfoSyns);
        tfo = true;
    }
    if let Some(seed) = tracking_seed() {
        track(ctx, &Segment::new(tcp, direction), seed, tfo);
    }
}

impl<'a> Segment<'a> {
    #[inline(always)]
    fn new(tcp: &'a TcpPacket, direction: Direction) -> Self {
        Segment {
            tcp,
            direction,
            // Local = this host's end: the listener (the service) for a handshake to us.
            key: FlowKey::oriented(tcp, direction),
            tag: Segment::tag_of(tcp, direction),
            flags: tcp.flags,
            seq: tcp.seq,
            ack: tcp.ack,
            payload_len: tcp.payload_len(),
        }
    }

    /// The open-handshake filter's tag of the segment's 4-tuple.
    #[inline(always)]
    fn tag_of(tcp: &TcpPacket, direction: Direction) -> u32 {
        let (remote, local_port, remote_port) = match direction {
            Direction::Ingress => (&tcp.saddr, tcp.dport, tcp.sport),
            Direction::Egress => (&tcp.daddr, tcp.sport, tcp.dport),
        };
        filter_tag(
            tcp.address_word(remote),
            (u32::from(remote_port) << 16) | u32::from(local_port),
        )
    }
}

/// ACK set, SYN, FIN and RST clear: established traffic, or a handshake's third packet.
#[inline(always)]
fn is_plain_ack(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_ACK) == TCP_ACK
}

/// Flag sets no conforming stack sends. ECE/CWR (ECN) are ignored: they are legal with SYN.
#[inline(always)]
fn illegal_flags(flags: u8) -> Option<AnomalyKind> {
    let f = flags & (TCP_FIN | TCP_SYN | TCP_RST | TCP_PSH | TCP_ACK | TCP_URG);
    if f & (TCP_SYN | TCP_FIN) == TCP_SYN | TCP_FIN {
        Some(AnomalyKind::SynFin)
    } else if f & (TCP_SYN | TCP_RST) == TCP_SYN | TCP_RST {
        Some(AnomalyKind::SynRst)
    } else if f == 0 {
        Some(AnomalyKind::NullFlags)
    } else if f == TCP_FIN | TCP_PSH | TCP_URG {
        Some(AnomalyKind::XmasFlags)
    } else if (f & TCP_ACK == 0 && f & (TCP_FIN | TCP_PSH | TCP_URG) != 0)
        || f & (TCP_RST | TCP_FIN) == TCP_RST | TCP_FIN
        || f & (TCP_SYN | TCP_URG) == TCP_SYN | TCP_URG
    {
        Some(AnomalyKind::InvalidFlags)
    } else {
        None
    }
}

/// Whether a SYN's options include a Fast Open cookie (kind 34, or 254 with magic 0xF989).
/// The walk runs under `bpf_loop`, whose callback the verifier checks once, not once per
/// iteration and branch: an unrolled 40-step walk cost it 600 000 instructions and seconds
/// of load time per program.
#[inline(never)]
fn has_fastopen_option(ctx: &TcContext, options_start: usize, options_len: usize) -> bool {
    let mut walk = OptionWalk {
        skb: ctx.as_ptr().cast(),
        start: options_start as u32,
        len: options_len as u32,
        at: 0,
        found: 0,
    };
    // SAFETY: the callback matches bpf_loop's signature and only reads `walk`, which lives
    // on this stack frame until bpf_loop returns.
    unsafe {
        bpf_loop(
            MAX_OPTIONS as u32,
            fastopen_step as *mut c_void,
            (&raw mut walk).cast(),
            0,
        );
    }
    walk.found != 0
}

/// State of one option walk, shared with `fastopen_step` through `bpf_loop`.
#[repr(C)]
struct OptionWalk {
    skb: *mut __sk_buff,
    /// Offset of the first option in the frame, and the length of the option list.
    start: u32,
    len: u32,
    /// Offset of the next option within the list.
    at: u32,
    found: u32,
}

/// One option: 0 to go on to the next, 1 to stop (found, end of list, or malformed).
extern "C" fn fastopen_step(_index: u64, walk: *mut c_void) -> c_long {
    // SAFETY: bpf_loop hands back the pointer has_fastopen_option gave it.
    let walk = unsafe { &mut *walk.cast::<OptionWalk>() };
    if walk.at >= walk.len {
        return 1;
    }
    let mut option = [0u8; 4];
    let offset = walk.start + walk.at;
    // SAFETY: two bytes into a four-byte buffer; the helper checks the packet bounds.
    if unsafe { bpf_skb_load_bytes(walk.skb.cast(), offset, option.as_mut_ptr().cast(), 2) } != 0 {
        return 1;
    }
    let [kind, option_len, ..] = option;
    let step = match kind {
        TCPOPT_END => return 1,
        TCPOPT_NOP => 1,
        TCPOPT_FASTOPEN => {
            walk.found = 1;
            return 1;
        }
        _ if option_len < 2 => return 1,
        TCPOPT_EXPERIMENTAL if option_len >= 4 => {
            // SAFETY: as above, the magic's two bytes after kind and length.
            let magic = unsafe {
                bpf_skb_load_bytes(walk.skb.cast(), offset + 2, option.as_mut_ptr().cast(), 2)
            };
            if magic == 0 && option[..2] == [0xf9, 0x89] {
                walk.found = 1;
                return 1;
            }
            u32::from(option_len)
        }
        _ => u32::from(option_len),
    };
    walk.at += step;
    0
}

/// The state table's hash seed while tracking is on.
#[inline(always)]
fn tracking_seed() -> Option<u32> {
    HANDSHAKE_CONFIG.get(0).copied().filter(|&seed| seed != 0)
}

/// The stateful checks. This host's own SYNs and ACKs leave before the 4-tuple's place in
/// the state table is computed.
#[inline(always)]
fn track(ctx: &TcContext, segment: &Segment, seed: u32, tfo: bool) {
    let flags = segment.flags & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST);
    let egress = segment.direction == Direction::Egress;
    if egress && flags != TCP_SYN | TCP_ACK && flags & (TCP_RST | TCP_FIN) == 0 {
        return;
    }
    let at = &Place::of(&segment.key, seed);
    match segment.direction {
        Direction::Ingress if flags == TCP_SYN => on_syn(ctx, segment, at, tfo),
        Direction::Ingress if flags == TCP_SYN | TCP_ACK => on_synack_to_us(segment, at),
        Direction::Ingress if flags & TCP_RST != 0 => on_rst(ctx, segment, at),
        Direction::Ingress if flags & TCP_FIN != 0 => on_client_fin(ctx, segment, at),
        Direction::Ingress => on_client_ack(ctx, segment, at),
        Direction::Egress if flags == TCP_SYN | TCP_ACK => on_synack_sent(ctx, segment, at),
        Direction::Egress if flags & TCP_RST != 0 => on_server_rst(segment, at),
        Direction::Egress => forget(segment, at),
    }
}

/// Almost every SYN opens a handshake: its state goes into the 4-tuple's slot unless the slot
/// holds that 4-tuple already (a retransmitted SYN, or a SYN on an established connection).
#[inline(always)]
fn on_syn(ctx: &TcContext, segment: &Segment, at: &Place, tfo: bool) {
    let state = Handshake {
        client_isn: segment.seq,
        synack_seq: 0,
        synack_ack: 0,
        state: SYN_SEEN,
        tfo: u16::from(tfo),
    };
    count(HandshakeCounter::StateLookups);
    match table::put_new(at, &segment.key, &state) {
        None => filter_set(segment.tag),
        Some(held) if held.state == ESTABLISHED => {
            report(ctx, segment, AnomalyKind::SynOnEstablished, 0, 0);
        }
        Some(held) if segment.seq != held.client_isn => {
            let expected = held.client_isn;
            let kind = AnomalyKind::SynRetransmitDifferentIsn;
            report(ctx, segment, kind, expected, 0);
        }
        // The same SYN again.
        Some(_) => {}
    }
}

/// Our own SYN-ACK leaving: remember its ISN, or judge a retransmission against the first.
#[inline(always)]
fn on_synack_sent(ctx: &TcContext, segment: &Segment, at: &Place) {
    match lookup(segment, at) {
        Some(state) if state.state == SYNACK_SENT => {
            let (seq, ack) = (state.synack_seq, state.synack_ack);
            if segment.ack != ack {
                let kind = AnomalyKind::SynAckRetransmitDifferentAck;
                report(ctx, segment, kind, seq, ack);
            } else if segment.seq != seq {
                let kind = AnomalyKind::SynAckRetransmitDifferentSeq;
                report(ctx, segment, kind, seq, ack);
            }
        }
        Some(state) if state.state == SYN_SEEN => {
            let sent = Handshake {
                synack_seq: segment.seq,
                synack_ack: segment.ack,
                state: SYNACK_SENT,
                ..state
            };
            table::put(at, &segment.key, &sent);
        }
        Some(_) => {}
        None => {
            // The SYN was not seen (the tracker started, or its slot was taken over).
            let state = Handshake {
                client_isn: segment.ack.wrapping_sub(1),
                synack_seq: segment.seq,
                synack_ack: segment.ack,
                state: SYNACK_SENT,
                tfo: 0,
            };
            table::put(at, &segment.key, &state);
            filter_set(segment.tag);
        }
    }
}

/// Our RST. Without ACK it answers a segment that carried one: during the handshake an
/// unacceptable third packet, and the kernel keeps its request, so the tracker keeps its state
/// (until a newer handshake takes its slot). With ACK the kernel ended the handshake itself:
/// an embryonic reset (a SYN with another ISN in the window drops the request) or an aborted
/// socket. Otherwise the connection is over.
#[inline(always)]
fn on_server_rst(segment: &Segment, at: &Place) {
    let answers_a_bad_ack = segment.flags & TCP_ACK == 0;
    if !answers_a_bad_ack || lookup(segment, at).is_none_or(|state| state.state != SYNACK_SENT) {
        forget(segment, at);
    }
}

/// A SYN-ACK arriving for a 4-tuple where we are the server. In a simultaneous open the
/// peer's SYN-ACK repeats its SYN's ISN and acks ours: that one is legitimate, and completes
/// the handshake. Any other is reported by the SYN-ACK origin check (`synack_to_listener`).
#[inline(always)]
fn on_synack_to_us(segment: &Segment, at: &Place) {
    let Some(state) = lookup(segment, at) else {
        return; // the answer to our own SYN: we are the client here
    };
    let simultaneous_open = segment.seq == state.client_isn
        && (state.state == SYN_SEEN || segment.ack == state.synack_seq.wrapping_add(1));
    if !simultaneous_open {
        return;
    }
    // Still "SYN seen": the peer's SYN-ACK may reach our kernel before its SYN (they can take
    // different CPUs), which then completes our connect() and sends no SYN-ACK. Our ISN is
    // the one it acks, and the one a SYN-ACK of ours would repeat.
    let established = Handshake {
        synack_seq: segment.ack.wrapping_sub(1),
        state: ESTABLISHED,
        ..state
    };
    table::put(at, &segment.key, &established);
    filter_clear(segment.tag);
}

/// A client RST during the handshake must hit the window at the next expected seq.
#[inline(always)]
fn on_rst(ctx: &TcContext, segment: &Segment, at: &Place) {
    let Some(state) = lookup(segment, at) else {
        return;
    };
    let expected = match state.state {
        SYN_SEEN => state.client_isn.wrapping_add(1),
        SYNACK_SENT => state.synack_ack,
        _ => {
            table::remove(at, &segment.key);
            return;
        }
    };
    if segment.seq.wrapping_sub(expected) >= SEQ_WINDOW {
        // The kernel ignores it, and so does the tracker.
        report(ctx, segment, AnomalyKind::RstOutOfWindow, expected, 0);
    } else {
        forget(segment, at);
    }
}

#[inline(always)]
fn on_client_fin(ctx: &TcContext, segment: &Segment, at: &Place) {
    let Some(state) = lookup(segment, at) else {
        return;
    };
    match state.state {
        SYN_SEEN => report(ctx, segment, AnomalyKind::FinBeforeHandshake, 0, 0),
        SYNACK_SENT if !acks_our_synack(&state, segment) => {
            report(ctx, segment, AnomalyKind::FinBeforeHandshake, 0, 0);
        }
        SYNACK_SENT => forget(segment, at),
        // Completed: its filter slot was cleared then, so the slot (a cache miss, most
        // likely) is not read again.
        _ => table::remove(at, &segment.key),
    }
}

/// A plain ACK on a 4-tuple the filter says has an open handshake: the third packet.
#[inline(always)]
fn on_client_ack(ctx: &TcContext, segment: &Segment, at: &Place) {
    let Some(state) = lookup(segment, at) else {
        return;
    };
    match state.state {
        SYN_SEEN if segment.payload_len > 0 => {
            report(ctx, segment, AnomalyKind::DataBeforeHandshake, 0, 0);
        }
        SYN_SEEN => report(ctx, segment, AnomalyKind::AckWithoutSynAck, 0, 0),
        SYNACK_SENT => {
            let seq_ok = segment.seq.wrapping_sub(state.synack_ack) < SEQ_WINDOW;
            let kind = match (seq_ok, acks_our_synack(&state, segment)) {
                (true, true) => {
                    let established = Handshake {
                        state: ESTABLISHED,
                        ..state
                    };
                    table::put(at, &segment.key, &established);
                    filter_clear(segment.tag);
                    return;
                }
                (true, false) => AnomalyKind::HandshakeAckWrongAck,
                (false, true) => AnomalyKind::HandshakeAckWrongSeq,
                (false, false) => AnomalyKind::HandshakeAckWrongSeqAndAck,
            };
            let (seq, ack) = (state.synack_ack, state.synack_seq.wrapping_add(1));
            report(ctx, segment, kind, seq, ack);
        }
        _ => {}
    }
}

/// The ack is our ISN+1 exactly; after a TFO SYN the server may already have sent data.
#[inline(always)]
fn acks_our_synack(state: &Handshake, segment: &Segment) -> bool {
    let acked = segment.ack.wrapping_sub(state.synack_seq.wrapping_add(1));
    segment.flags & TCP_ACK != 0 && (acked == 0 || (state.tfo != 0 && acked < SEQ_WINDOW))
}

/// The 4-tuple's state, a copy: a change is written back with `table::put`. Two CPUs changing
/// one 4-tuple's state at once can at worst lose one change.
#[inline(always)]
fn lookup(segment: &Segment, at: &Place) -> Option<Handshake> {
    count(HandshakeCounter::StateLookups);
    table::get(at, &segment.key)
}

#[inline(always)]
fn forget(segment: &Segment, at: &Place) {
    table::remove(at, &segment.key);
    filter_clear(segment.tag);
}

/// A non-zero 32-bit tag of (remote address low word, remote port, local port).
#[inline(always)]
fn filter_tag(remote_word: u32, ports: u32) -> u32 {
    packet::tuple_mix(remote_word, ports) | 1
}

#[inline(always)]
fn filter_slot(tag: u32) -> u32 {
    (tag >> 8) & (FILTER_SLOTS - 1)
}

#[inline(always)]
fn filter_contains(tag: u32) -> bool {
    OPEN_HANDSHAKES
        .get(filter_slot(tag))
        .is_some_and(|slot| *slot == tag)
}

#[inline(always)]
fn filter_set(tag: u32) {
    if let Some(slot) = OPEN_HANDSHAKES.get_ptr_mut(filter_slot(tag)) {
        // SAFETY: an array slot; a racing writer can only replace one tag by another.
        unsafe { *slot = tag };
    }
}

#[inline(always)]
fn filter_clear(tag: u32) {
    if let Some(slot) = OPEN_HANDSHAKES.get_ptr_mut(filter_slot(tag)) {
        // SAFETY: as in filter_set; only our own tag is cleared.
        unsafe {
            if *slot == tag {
                *slot = 0;
            }
        }
    }
}

/// Reports an anomaly another detector found in a segment (the SYN-ACK origin check's).
#[inline(always)]
pub fn report_segment(ctx: &TcContext, direction: Direction, tcp: &TcpPacket, kind: AnomalyKind) {
    report(ctx, &Segment::new(tcp, direction), kind, 0, 0);
}

/// A subprogram: called from a dozen places, and the same code each time.
#[inline(never)]
fn report(
    ctx: &TcContext,
    segment: &Segment,
    kind: AnomalyKind,
    expected_seq: u32,
    expected_ack: u32,
) {
    let Some(mut entry) = ANOMALY_EVENTS.reserve::<AnomalyEvent>(0) else {
        count(HandshakeCounter::EventsDropped);
        return;
    };
    let tcp = segment.tcp;
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved, writable AnomalyEvent; every field is written
    // in place (no copy of the whole record on the small BPF stack) before submit.
    unsafe {
        (*event).ts_ns = bpf_ktime_get_ns();
        packet::copy_address(&raw mut (*event).saddr, &tcp.saddr);
        packet::copy_address(&raw mut (*event).daddr, &tcp.daddr);
        // The context of a TC program is a valid __sk_buff.
        (*event).ifindex = (*ctx.as_ptr().cast::<__sk_buff>()).ifindex;
        (*event).seq = segment.seq;
        (*event).ack = segment.ack;
        (*event).expected_seq = expected_seq;
        (*event).expected_ack = expected_ack;
        (*event).sport = tcp.sport;
        (*event).dport = tcp.dport;
        (*event).payload_len = segment.payload_len as u16;
        (*event).family = tcp.family;
        (*event).direction = segment.direction as u8;
        (*event).kind = kind as u8;
        (*event).flags = segment.flags;
        (*event)._pad = [0; 2];
    }
    entry.submit(ringbuf::batched_wakeup::<AnomalyEvent>(
        &ANOMALY_EVENTS,
        ANOMALY_RINGBUF_BYTES,
    ));
}

/// Adds one to a per-CPU counter.
#[inline(always)]
fn count(counter: HandshakeCounter) {
    if let Some(slot) = HANDSHAKE_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, and TC programs do not nest on one CPU.
        unsafe { *slot += 1 };
    }
}
