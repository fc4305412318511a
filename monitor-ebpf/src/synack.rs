//! SYN-ACK sampler: one ring-buffer record per SYN-ACK, counters for everything else.

use aya_ebpf::{
    EbpfContext,
    bindings::__sk_buff,
    btf_maps::{ArrayOfMaps, RingBuf},
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_get_smp_processor_id, bpf_skb_load_bytes},
    },
    macros::btf_map,
    programs::TcContext,
};
use aya_log_ebpf::warn;
use seqwatch_common::{
    Direction,
    packet::Counter,
    synack::{MAX_CPUS, MAX_TCP_OPTIONS, RING_BYTES_MIN, SynAckRecord},
};

use crate::{
    packet::{self, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TcpPacket},
    ringbuf,
};

/// This CPU's ring is at its CPU number (see `seqwatch_common::synack::RING_BYTES_TOTAL`).
/// The inner definition is only the template the kernel checks each ring against; userspace
/// sizes the rings for the host's CPUs.
#[btf_map]
static SYNACK_RINGS: ArrayOfMaps<
    RingBuf<SynAckRecord, { RING_BYTES_MIN as usize }>,
    { MAX_CPUS as usize },
> = ArrayOfMaps::new();

/// Log the first ring-buffer drop on a CPU and then every 2^16th: enough to see it in the
/// journal without putting logging on the per-packet path.
const DROP_LOG_EVERY: u64 = 1 << 16;

/// SYN and ACK set, RST and FIN clear.
#[inline(always)]
pub fn is_synack(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN | TCP_ACK
}

/// Sends one SYN-ACK's record, written in place in this CPU's ring buffer (no copy through the
/// stack). A subprogram of its own, beside (not under) the handshake tracker, so that the
/// verifier's combined stack stays small.
#[inline(never)]
pub fn emit(ctx: &TcContext, direction: Direction, tcp: &TcpPacket) {
    packet::count(Counter::SynAcks);
    // SAFETY: no preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    // Userspace gives every possible CPU a ring; an object loaded without them (a tool, a test)
    // drops and counts as on a full ring.
    let Some(ring) = SYNACK_RINGS.get(cpu) else {
        ringbuf_full(ctx);
        return;
    };
    let Some(mut entry) = ring.reserve(0) else {
        ringbuf_full(ctx);
        return;
    };
    let record = entry.as_mut_ptr();
    // Within 0..=40 for the verifier, whatever parse_tcp checked.
    let options_len = tcp.options_len().min(MAX_TCP_OPTIONS);
    if options_len > 0 && !load_options(ctx, tcp, record, options_len) {
        entry.discard(0);
        packet::count(Counter::ParseTruncated);
        return;
    }
    // The context of a TC program is a valid __sk_buff.
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: as above; every other field is written before submit.
    unsafe {
        (*record).ts_ns = sent_at(skb, direction);
        packet::copy_address(&raw mut (*record).saddr, &tcp.saddr);
        packet::copy_address(&raw mut (*record).daddr, &tcp.daddr);
        (*record).ifindex = (*skb).ifindex;
        (*record).seq = tcp.seq;
        (*record).ack = tcp.ack;
        (*record).sport = tcp.sport;
        (*record).dport = tcp.dport;
        (*record).window = tcp.window;
        (*record).family = tcp.family;
        (*record).direction = direction as u8;
        (*record).ttl = tcp.ttl;
        (*record).options_len = options_len as u8;
        (*record)._pad = [0; 2];
    }
    entry.submit(ringbuf::batched_wakeup_inner::<SynAckRecord, _>(ring));
}

/// `__sk_buff::tstamp_type` of a CLOCK_MONOTONIC stamp (uapi `BPF_SKB_CLOCK_MONOTONIC`, an
/// anonymous enum in the bindings).
pub(crate) const BPF_SKB_CLOCK_MONOTONIC: u8 = 1;

/// When the SYN-ACK left, on CLOCK_MONOTONIC. The kernel stamps every SYN-ACK it builds with
/// that clock's reading (`skb->tstamp`, typed monotonic) just before it reaches egress, and a
/// context load costs far less than the clock helper. The stamp is not used on ingress (it is
/// the sender's, or a receive time), on another clock (a bridged frame's realtime stamp), when
/// absent, nor when it is a whole number of microseconds: kernels that stamp a syncookie
/// SYN-ACK with its TCP timestamp option's time (`cookie_init_timestamp`: whole ms or µs, up
/// to 64 of them early; 6.18 stamps it with the time) would otherwise skew the sample, and
/// only about one ordinary stamp in a thousand, which then just costs the helper call, is one.
#[inline(always)]
fn sent_at(skb: *const __sk_buff, direction: Direction) -> u64 {
    if direction == Direction::Egress {
        // SAFETY: a valid __sk_buff. Volatile keeps each load at its field's own size, the
        // only access the verifier allows; reading `tstamp_type` at all is what makes the
        // kernel hand over egress stamps of every type rather than hide some.
        let (clock, stamp) = unsafe {
            (
                core::ptr::read_volatile(&raw const (*skb).tstamp_type),
                core::ptr::read_volatile(&raw const (*skb).tstamp),
            )
        };
        if clock == BPF_SKB_CLOCK_MONOTONIC && stamp % 1000 != 0 {
            return stamp;
        }
    }
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Copies the TCP options (1..=40 bytes) into the record. Option bytes past `options_len`
/// keep what the ring buffer held: userspace reads only the first `options_len`.
#[inline(always)]
fn load_options(
    ctx: &TcContext,
    tcp: &TcpPacket,
    record: *mut SynAckRecord,
    options_len: usize,
) -> bool {
    // SAFETY: `record` is a reserved, writable SynAckRecord whose options field holds 40
    // bytes; the helper checks the packet bounds.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr(),
            (tcp.tcp_offset + 20) as u32,
            (*record).options.as_mut_ptr().cast(),
            options_len as u32,
        )
    };
    loaded == 0
}

#[inline(always)]
fn ringbuf_full(ctx: &TcContext) {
    let dropped = packet::count(Counter::RingbufDropped);
    if dropped % DROP_LOG_EVERY == 1 {
        warn!(
            ctx,
            "seqwatch: ring buffer full, SYN-ACK records dropped on this CPU: {}", dropped
        );
    }
}
