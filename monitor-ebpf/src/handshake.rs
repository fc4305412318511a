//! Handshake anomaly tracker: stateless flag checks on every TCP segment that is not a plain
//! ACK, and a small per-4-tuple state (`table`) for handshakes to this host's listeners, so
//! that the third packet, retransmitted SYNs and SYN-ACKs, early data/FIN and handshake RSTs
//! can be judged. Every anomaly becomes one `AnomalyEvent` in its own ring buffer.
//!
//! What established traffic pays: a plain ACK (ACK set; SYN, FIN, RST clear) — every data
//! segment and pure ACK of an established connection — is only interesting as a handshake's
//! third packet, which arrives on ingress while a handshake to us is open. So egress plain ACKs
//! leave after the flags byte, and ingress ones after one read of a set of an array
//! (`OPEN_HANDSHAKES`, inlined by the verifier: no helper call, no hash-map lookup) that holds a
//! tag of each 4-tuple with an open handshake, four to a set. Only a tag match costs a state
//! lookup. What that misses, accepted because the alternative is a hash lookup per data segment:
//! - ACKs or data for a 4-tuple that never had a handshake (a SYN-cookie guess, or midstream
//!   traffic): no state exists, so there is nothing to judge them against anyway;
//! - the third packet of a handshake whose tag a newer one took (the filter, like the state
//!   table, gives way only for unprotected handshakes: see `table`): its state stays "SYN-ACK
//!   sent" until its FIN or RST, which are looked up and complete it implicitly when they ack
//!   our SYN-ACK, so it yields no false anomaly;
//! - anything after completion except SYN, FIN and RST (in-window checks are the kernel's).
//!
//! A guess at our ISN that the tracker could not judge (its handshake's state refused, lost,
//! or opened before the tracker) is still counted: the kernel answers it with a reset, whose
//! tracepoint (`tcp_events`) hands it to [`rejected_ack`].

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
    maps::{Array, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::TcContext,
};
use seqwatch_common::{
    Direction,
    handshake::{
        ANOMALY_RINGBUF_BYTES, AnomalyEvent, AnomalyKind, HandshakeCounter, KERNEL_GUESS_SERVICES,
        PROTECTION_TICK_SHIFT,
    },
    synack::FAMILY_IPV4,
    tcp_events::{OWN_NETNS, ResetService},
};

use self::table::{Admission, Place, Way};
use crate::{
    packet::{self, FlowKey, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TCP_URG, TcpPacket},
    ringbuf,
    synack::BPF_SKB_CLOCK_MONOTONIC,
    tcp_events,
};

/// Sets of the open-handshake filter (a power of two), of `FILTER_WAYS` tags each: 131 072
/// tags, as many as the state table has ways (512 KiB, and as much for their protection).
const FILTER_SETS: u32 = 1 << 15;
const FILTER_WAYS: usize = 4;
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
/// one direction only the stateless checks run. Index 1: for how many protection clock ticks
/// after its SYN-ACK an open handshake is protected (see `table`); 0: none.
#[map]
static HANDSHAKE_CONFIG: Array<u32> = Array::with_max_entries(2, 0);

/// Each way of each set: the tag of a 4-tuple whose handshake is open, 0 for none. What the
/// per-packet check reads: 16 bytes per set.
#[map]
static OPEN_HANDSHAKES: Array<[u32; FILTER_WAYS]> = Array::with_max_entries(FILTER_SETS, 0);

/// Beside each tag, the tick its protection ends (0: none), read only to decide which tag
/// gives way to a new one. Written before its tag: a race misplaces an eviction at worst.
#[map]
static OPEN_HANDSHAKE_PROTECTION: Array<[u32; FILTER_WAYS]> =
    Array::with_max_entries(FILTER_SETS, 0);

/// ACKs a listener rejected that the tracker could not judge, per local service (see
/// [`rejected_ack`]).
#[map]
static KERNEL_GUESSES: PerCpuHashMap<ResetService, u64> =
    PerCpuHashMap::with_max_entries(KERNEL_GUESS_SERVICES, 0);

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

impl Handshake {
    /// What a way the table did not find holds: nothing to read.
    const NONE: Handshake = Handshake {
        client_isn: 0,
        synack_seq: 0,
        synack_ack: 0,
        state: SYN_SEEN,
        tfo: 0,
    };
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
        report(
            ctx,
            &Segment::new(tcp, receivers_view(ctx, direction)),
            kind,
            0,
            0,
        );
        return;
    }
    let mut tfo = false;
    if flags & (TCP_SYN | TCP_ACK) == TCP_SYN && tcp.payload_len() > 0 {
        if !has_fastopen_option(ctx, tcp.tcp_offset + 20, tcp.options_len()) {
            let kind = AnomalyKind::SynWithData;
            report(
                ctx,
                &Segment::new(tcp, receivers_view(ctx, direction)),
                kind,
                0,
                0,
            );
            return;
        }
        count(HandshakeCounter::TfoSyns);
        tfo = true;
    }
    if let Some(seed) = tracking_seed() {
        track(ctx, &Segment::new(tcp, direction), seed, tfo);
    }
}

/// How a stateless finding is oriented. A segment leaving that came in by another interface
/// (forwarded to a container or a LAN host, or bridged) was not sent by this host: as for one
/// arriving, its destination is the service it was aimed at, its source the sender. Read only
/// when a finding is reported.
#[inline(always)]
fn receivers_view(ctx: &TcContext, direction: Direction) -> Direction {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: the context of a TC program is a valid __sk_buff.
    let came_in_by = unsafe { (*skb).ingress_ifindex };
    if direction == Direction::Egress && came_in_by != 0 {
        Direction::Ingress
    } else {
        direction
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
/// the state table is computed; a new SYN goes to `on_syn`, every other segment looks its
/// 4-tuple up once.
#[inline(always)]
fn track(ctx: &TcContext, segment: &Segment, seed: u32, tfo: bool) {
    let flags = segment.flags & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST);
    let egress = segment.direction == Direction::Egress;
    if egress && flags != TCP_SYN | TCP_ACK && flags & (TCP_RST | TCP_FIN) == 0 {
        return;
    }
    let at = &Place::of(&segment.key, seed);
    count(HandshakeCounter::StateLookups);
    if !egress && flags == TCP_SYN {
        on_syn(ctx, segment, at, tfo);
        return;
    }
    let found = &table::get(at, &segment.key);
    match segment.direction {
        Direction::Ingress if flags == TCP_SYN | TCP_ACK => on_synack_to_us(segment, at, found),
        Direction::Ingress if flags & TCP_RST != 0 => on_rst(ctx, segment, at, found),
        Direction::Ingress if flags & TCP_FIN != 0 => on_client_fin(ctx, segment, at, found),
        Direction::Ingress => on_client_ack(ctx, segment, at, found),
        Direction::Egress if flags == TCP_SYN | TCP_ACK => {
            on_synack_sent(ctx, segment, at, found);
        }
        Direction::Egress if flags & TCP_RST != 0 => on_server_rst(segment, at, found),
        Direction::Egress => forget(segment, at, found),
    }
}

/// Almost every SYN opens a handshake: its state goes into the 4-tuple's set unless the set
/// holds that 4-tuple already (a retransmitted SYN, or a SYN on an established connection)
/// or has no room for it.
#[inline(always)]
fn on_syn(ctx: &TcContext, segment: &Segment, at: &Place, tfo: bool) {
    let (admission, way) = table::admit(at, &segment.key, clock_tick);
    let held = way.state;
    match admission {
        Admission::Held if held.state == ESTABLISHED => {
            report(ctx, segment, AnomalyKind::SynOnEstablished, 0, 0);
        }
        Admission::Held if segment.seq != held.client_isn => {
            let expected = held.client_isn;
            let kind = AnomalyKind::SynRetransmitDifferentIsn;
            report(ctx, segment, kind, expected, 0);
        }
        // The same SYN again.
        Admission::Held => {}
        _ => {
            let state = Handshake {
                client_isn: segment.seq,
                synack_seq: 0,
                synack_ack: 0,
                state: SYN_SEEN,
                tfo: u16::from(tfo),
            };
            place_new(segment, at, admission, &way, &state, 0);
        }
    }
}

/// Our own SYN-ACK leaving: remember its ISN, or judge a retransmission against the first.
#[inline(always)]
fn on_synack_sent(ctx: &TcContext, segment: &Segment, at: &Place, found: &Way) {
    let state = found.state;
    if !found.held() {
        // The SYN was not seen (the tracker started, or the SYN found no room).
        let state = Handshake {
            client_isn: segment.ack.wrapping_sub(1),
            synack_seq: segment.seq,
            synack_ack: segment.ack,
            state: SYNACK_SENT,
            tfo: 0,
        };
        let (admission, way) = table::admit(at, &segment.key, clock_tick);
        // Held: another CPU's segment of the handshake came first.
        if admission != Admission::Held {
            place_new(segment, at, admission, &way, &state, protection(ctx));
        }
    } else if state.state == SYNACK_SENT {
        let (seq, ack) = (state.synack_seq, state.synack_ack);
        if segment.ack != ack {
            let kind = AnomalyKind::SynAckRetransmitDifferentAck;
            report(ctx, segment, kind, seq, ack);
        } else if segment.seq != seq {
            let kind = AnomalyKind::SynAckRetransmitDifferentSeq;
            report(ctx, segment, kind, seq, ack);
        }
    } else if state.state == SYN_SEEN {
        let sent = Handshake {
            synack_seq: segment.seq,
            synack_ack: segment.ack,
            state: SYNACK_SENT,
            ..state
        };
        let protected_until = protection(ctx);
        if filter_insert(segment.tag, protected_until) {
            table::put(at, found, &sent, protected_until);
        } else {
            table::remove(at, found, &segment.key);
            count(HandshakeCounter::StateRefused);
        }
    }
}

/// Until when a handshake whose SYN-ACK is leaving is protected (see `table`): for the
/// kernel's request lifetime (userspace's figure, in ticks) after it left when a request
/// socket sent it, not at all for a SYN cookie, which the kernel sends without a socket and
/// keeps nothing for.
#[inline(always)]
fn protection(ctx: &TcContext) -> u32 {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: the context of a TC program is a valid __sk_buff; `sk` is read whole, as the
    // verifier requires, and only compared with null.
    let sender = unsafe { core::ptr::read_volatile(&raw const (*skb).__bindgen_anon_2.sk) };
    let ticks = HANDSHAKE_CONFIG.get(1).copied().unwrap_or(0);
    if sender.is_null() || ticks == 0 {
        return 0;
    }
    // SAFETY: as above; the kernel stamps the SYN-ACKs it builds with CLOCK_MONOTONIC (a
    // context load), else the clock is read.
    let (clock, stamp) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*skb).tstamp_type),
            core::ptr::read_volatile(&raw const (*skb).tstamp),
        )
    };
    let sent = if clock == BPF_SKB_CLOCK_MONOTONIC && stamp != 0 {
        (stamp >> PROTECTION_TICK_SHIFT) as u32
    } else {
        clock_tick()
    };
    sent.saturating_add(ticks)
}

/// The protection clock: `bpf_ktime_get_ns()` in ticks of 2^30 ns.
#[inline(always)]
fn clock_tick() -> u32 {
    // SAFETY: no preconditions.
    (unsafe { bpf_ktime_get_ns() } >> PROTECTION_TICK_SHIFT) as u32
}

/// Keeps a new handshake's state where the table admits it, if its filter set has room for
/// its tag too; counts what it took the place of (whose tag goes), or that it found no room.
#[inline(always)]
fn place_new(
    segment: &Segment,
    at: &Place,
    admission: Admission,
    way: &Way,
    state: &Handshake,
    protected_until: u32,
) {
    // What is evicted, and whether it had a filter tag (a completed handshake's went at
    // completion; an open one's goes with its state).
    let (evicted, had_tag) = match admission {
        Admission::Free => (None, false),
        Admission::EvictCookie => (Some(HandshakeCounter::EvictedCookie), true),
        Admission::EvictUnanswered => (Some(HandshakeCounter::EvictedUnanswered), true),
        Admission::EvictCompleted => (Some(HandshakeCounter::EvictedCompleted), false),
        Admission::EvictExpired => (Some(HandshakeCounter::EvictedExpired), true),
        Admission::Held | Admission::Refused => {
            count(HandshakeCounter::StateRefused);
            return;
        }
    };
    let victim_tag = if had_tag {
        key_tag(&table::key_at(at, way))
    } else {
        0
    };
    if !filter_insert(segment.tag, protected_until) {
        count(HandshakeCounter::StateRefused);
        return;
    }
    if let Some(counter) = evicted {
        count(counter);
    }
    if victim_tag != 0 && victim_tag != segment.tag {
        filter_clear(victim_tag);
    }
    table::write(at, way, &segment.key, state, protected_until);
}

/// Our RST. Without ACK it answers a segment that carried one: during the handshake an
/// unacceptable third packet, and the kernel keeps its request, so the tracker keeps its state
/// (until a newer handshake takes its slot). With ACK the kernel ended the handshake itself:
/// an embryonic reset (a SYN with another ISN in the window drops the request) or an aborted
/// socket. Otherwise the connection is over.
#[inline(always)]
fn on_server_rst(segment: &Segment, at: &Place, found: &Way) {
    let answers_a_bad_ack = segment.flags & TCP_ACK == 0;
    if !answers_a_bad_ack || !found.held() || found.state.state != SYNACK_SENT {
        forget(segment, at, found);
    }
}

/// A SYN-ACK arriving for a 4-tuple where we are the server. In a simultaneous open the
/// peer's SYN-ACK repeats its SYN's ISN and acks ours: that one is legitimate, and completes
/// the handshake. Any other is reported by the SYN-ACK origin check (`synack_to_listener`).
#[inline(always)]
fn on_synack_to_us(segment: &Segment, at: &Place, found: &Way) {
    if !found.held() {
        return; // the answer to our own SYN: we are the client here
    }
    let state = found.state;
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
    table::put(at, found, &established, 0);
    filter_clear(segment.tag);
}

/// A client RST during the handshake must hit the window at the next expected seq.
#[inline(always)]
fn on_rst(ctx: &TcContext, segment: &Segment, at: &Place, found: &Way) {
    if !found.held() {
        return;
    }
    let state = found.state;
    let expected = match state.state {
        SYN_SEEN => state.client_isn.wrapping_add(1),
        SYNACK_SENT => state.synack_ack,
        _ => {
            table::remove(at, found, &segment.key);
            return;
        }
    };
    if segment.seq.wrapping_sub(expected) >= SEQ_WINDOW {
        // The kernel ignores it, and so does the tracker.
        report(ctx, segment, AnomalyKind::RstOutOfWindow, expected, 0);
    } else {
        forget(segment, at, found);
    }
}

#[inline(always)]
fn on_client_fin(ctx: &TcContext, segment: &Segment, at: &Place, found: &Way) {
    if !found.held() {
        return;
    }
    let state = found.state;
    match state.state {
        SYN_SEEN => report(ctx, segment, AnomalyKind::FinBeforeHandshake, 0, 0),
        SYNACK_SENT if !acks_our_synack(&state, segment) => {
            report(ctx, segment, AnomalyKind::FinBeforeHandshake, 0, 0);
        }
        SYNACK_SENT => forget(segment, at, found),
        // Completed: its filter slot was cleared then, so the filter is not read again.
        _ => table::remove(at, found, &segment.key),
    }
}

/// A plain ACK on a 4-tuple the filter says has an open handshake: the third packet.
#[inline(always)]
fn on_client_ack(ctx: &TcContext, segment: &Segment, at: &Place, found: &Way) {
    if !found.held() {
        return;
    }
    let state = found.state;
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
                    table::put(at, found, &established, 0);
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

#[inline(always)]
fn forget(segment: &Segment, at: &Place, found: &Way) {
    if found.held() {
        table::remove(at, found, &segment.key);
    }
    filter_clear(segment.tag);
}

/// An ACK-bearing segment (no SYN, no RST) that a listener of the monitored namespace
/// answered with a reset for its flags: it matched no handshake the kernel keeps, or acked
/// the wrong ISN. Counted per service (`KERNEL_GUESSES`) unless the tracker judged it — had
/// its 4-tuple's state and, for a plain ACK, which it looks up only then, its filter tag — so
/// that a guess is counted once: by the tracker when it could judge it, by the kernel's
/// verdict when it could not (its state was refused, lost, or never seen).
pub fn rejected_ack(key: &FlowKey, flags: u8) {
    if judged(key, flags) {
        return;
    }
    let service = ResetService {
        addr: address_words(&key.local),
        port: key.local_port,
        family: key.family as u8,
        _pad: 0,
        netns: OWN_NETNS,
    };
    if !tcp_events::count_per_key(&KERNEL_GUESSES, &service) {
        count(HandshakeCounter::KernelGuessesUnkeyed);
    }
}

/// A rejected ACK whose headers could not be read: counted, under service "other".
pub fn unreadable_rejected_ack() {
    count(HandshakeCounter::KernelGuessesUnkeyed);
}

#[inline(always)]
fn judged(key: &FlowKey, flags: u8) -> bool {
    let Some(seed) = tracking_seed() else {
        return false;
    };
    if is_plain_ack(flags) && !filter_contains(key_tag(key)) {
        return false;
    }
    table::get(&Place::of(key, seed), key).held()
}

/// An address as four words in memory order (network byte order, IPv4 in the first).
#[inline(always)]
fn address_words(address: &packet::Address) -> [u32; 4] {
    let [low, high] = *address;
    [
        low as u32,
        (low >> 32) as u32,
        high as u32,
        (high >> 32) as u32,
    ]
}

/// A non-zero 32-bit tag of (remote address low word, remote port, local port).
#[inline(always)]
fn filter_tag(remote_word: u32, ports: u32) -> u32 {
    packet::tuple_mix(remote_word, ports) | 1
}

/// The filter tag of a 4-tuple's key, as `Segment::tag_of` makes it from its segments.
#[inline(always)]
fn key_tag(key: &FlowKey) -> u32 {
    let remote_word = if key.family == u32::from(FAMILY_IPV4) {
        u32::from_be(key.remote[0] as u32)
    } else {
        u32::from_be((key.remote[1] >> 32) as u32)
    };
    let ports = (u32::from(key.remote_port) << 16) | u32::from(key.local_port);
    filter_tag(remote_word, ports)
}

#[inline(always)]
fn filter_set_of(tag: u32) -> u32 {
    (tag >> 8) & (FILTER_SETS - 1)
}

#[inline(always)]
fn filter_contains(tag: u32) -> bool {
    OPEN_HANDSHAKES
        .get(filter_set_of(tag))
        .is_some_and(|ways| ways.contains(&tag))
}

/// Gives `tag` a way of its filter set, with its protection (a tag held already keeps its
/// own unless one is given): the way that holds it, else a free one, else one of an
/// unprotected tag, else one whose protection has run out; false if none is left.
#[inline(always)]
fn filter_insert(tag: u32, protected_until: u32) -> bool {
    let set = filter_set_of(tag);
    let (Some(tags), Some(protection)) = (
        OPEN_HANDSHAKES.get_ptr_mut(set),
        OPEN_HANDSHAKE_PROTECTION.get_ptr_mut(set),
    ) else {
        return false;
    };
    let (tags, protection) = (tags.cast::<u32>(), protection.cast::<u32>());
    // The way holding the tag, else a free one: FILTER_WAYS for none (not Options: LLVM leaves
    // a None's payload undefined, and the verifier refuses to read an undefined register).
    let (mut held, mut free) = (FILTER_WAYS, FILTER_WAYS);
    for way in 0..FILTER_WAYS {
        // SAFETY: words of array elements, valid for the program run; racing writers replace
        // one whole word by another.
        let held_tag = unsafe { core::ptr::read_volatile(tags.add(way)) };
        if held_tag == tag {
            held = way;
            break;
        }
        if held_tag == 0 {
            free = free.min(way);
        }
    }
    if held < FILTER_WAYS {
        // A SYN-ACK's protection for its SYN's tag (a store: the protection array's line is
        // not read for it). A SYN again leaves its tag's protection as it is.
        if protected_until != 0 {
            filter_write(tags, protection, held, tag, protected_until);
        }
        return true;
    }
    let way = if free < FILTER_WAYS {
        free
    } else {
        filter_victim(protection)
    };
    if way >= FILTER_WAYS {
        return false;
    }
    filter_write(tags, protection, way, tag, protected_until);
    true
}

/// In a full filter set, the way to give a new tag: one unprotected, else the one whose
/// protection ended first if it has; FILTER_WAYS for none.
#[inline(always)]
fn filter_victim(protection: *const u32) -> usize {
    let (mut first_to_expire, mut earliest_end) = (FILTER_WAYS, u32::MAX);
    for way in 0..FILTER_WAYS {
        // SAFETY: as in `filter_insert`.
        let until = unsafe { core::ptr::read_volatile(protection.add(way)) };
        if until == 0 {
            return way;
        }
        if until < earliest_end {
            (earliest_end, first_to_expire) = (until, way);
        }
    }
    if first_to_expire < FILTER_WAYS && clock_tick() >= earliest_end {
        first_to_expire
    } else {
        FILTER_WAYS
    }
}

/// Writes a way's protection, then its tag.
#[inline(always)]
fn filter_write(tags: *mut u32, protection: *mut u32, way: usize, tag: u32, until: u32) {
    let way = way & (FILTER_WAYS - 1);
    // SAFETY: as in `filter_insert`.
    unsafe {
        core::ptr::write_volatile(protection.add(way), until);
        core::ptr::write_volatile(tags.add(way), tag);
    }
}

/// Frees the way that holds `tag` (its protection word is then unused).
#[inline(always)]
fn filter_clear(tag: u32) {
    let Some(tags) = OPEN_HANDSHAKES.get_ptr_mut(filter_set_of(tag)) else {
        return;
    };
    // SAFETY: an array element, valid for the program run; a racing writer can only replace
    // one tag by another, and only our own tag is cleared.
    let tags = unsafe { &mut *tags };
    if let Some(way) = tags.iter_mut().find(|way| **way == tag) {
        *way = 0;
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
        // SAFETY: per-CPU slot. TC programs do not nest on one CPU; the reset tracepoint that
        // counts rejected ACKs may interrupt one, and then an increment can be lost.
        unsafe { *slot += 1 };
    }
}
