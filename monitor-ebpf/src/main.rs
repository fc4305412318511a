//! Seqwatch's kernel side. One detector per module; this file only names the entry points.
#![no_std]
#![no_main]
// Single-instruction packet loads at any alignment (`packet::load_u32` and kin).
#![feature(asm_experimental_arch)]
// The atomic add of `tcp_events`' listener counts: `AtomicU32::fetch_add` is missing on
// bpfel-unknown-none, while the BPF instruction set has it.
#![feature(core_intrinsics)]
#![allow(
    internal_features,
    reason = "core_intrinsics, for the atomic add above"
)]
#![allow(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "aya's #[classifier] expands to an extern fn taking the raw __sk_buff pointer"
)]

mod handshake;
mod listener_counts;
mod packet;
mod ringbuf;
mod synack;
mod synack_origin;
mod tcp_events;
mod tls;

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    macros::{btf_tracepoint, classifier},
    programs::{BtfTracePointContext, TcContext},
};
use seqwatch_common::{Direction, packet::Counter, synack_origin::JUDGES_SEGMENTS};

use crate::packet::{Skip, TcpPacket};

// Every classifier returns TC_ACT_UNSPEC (tcx: "next"): the packet goes on unchanged to
// whatever comes after us, and we never drop, redirect or rewrite it.

#[classifier]
pub fn synack_egress(ctx: TcContext) -> i32 {
    observe(&ctx, Direction::Egress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn synack_ingress(ctx: TcContext) -> i32 {
    observe(&ctx, Direction::Ingress);
    TC_ACT_UNSPEC
}

/// The per-packet fast path: untagged packets are classified from their flags read in place,
/// and only those a detector wants are parsed — once, for both detectors.
#[inline(always)]
fn observe(ctx: &TcContext, direction: Direction) {
    packet::count(Counter::PacketsSeen);
    let plain = match packet::plain_tcp(ctx) {
        Some(None) => return,
        Some(Some(tcp)) => {
            if !handshake::worth_parsing(ctx, direction, tcp.flags)
                && !tls::worth_parsing(ctx, direction, tcp.ports)
            {
                return;
            }
            true
        }
        None => false,
    };
    inspect(ctx, direction, plain);
}

/// Hands a parsed packet to the per-port counters, the SYN-ACK sampler, the handshake
/// tracker and the TLS check.
#[inline(never)]
fn inspect(ctx: &TcContext, direction: Direction, plain: bool) {
    // Not zeroed first: `parse` writes all of it before returning true, and zeroing would
    // be a call to a byte loop.
    let mut tcp = MaybeUninit::<TcpPacket>::uninit();
    if !parse(ctx, plain, &mut tcp) {
        return;
    }
    // SAFETY: parse returned true, so it wrote the whole packet.
    let tcp = unsafe { tcp.assume_init_ref() };
    listener_counts::count_segment(direction, tcp);
    let judged = match direction {
        Direction::Egress => synack_origin::judged_on_the_way_in(ctx),
        Direction::Ingress => 0,
    };
    if synack::is_synack(tcp.flags) {
        if synack_origin::admits(ctx, direction, tcp, judged) {
            synack::emit(ctx, direction, tcp);
        }
    } else if direction == Direction::Egress {
        synack_origin::record_syn(ctx, tcp);
    }
    // A forwarded segment the tracker judged as it came in would be reported twice, the
    // second time oriented as if this host had sent it.
    if judged & JUDGES_SEGMENTS == 0 {
        handshake::judge(ctx, direction, tcp);
    }
    tls::observe(ctx, direction, tcp);
}

/// Reads plain headers in place, or runs the full parser; counts parse failures. A
/// subprogram beside the detectors, so that the parser's stack is not added to theirs.
#[inline(never)]
fn parse(ctx: &TcContext, plain: bool, out: &mut MaybeUninit<TcpPacket>) -> bool {
    if plain && packet::read_plain_tcp(ctx, out) {
        return true;
    }
    match packet::parse_tcp(ctx, out) {
        Ok(()) => true,
        Err(Skip::NotTcp) => false,
        Err(Skip::Counted(counter)) => {
            packet::count(counter);
            false
        }
    }
}

/// The egress side of `--direction ingress`: records the SYNs leaving (for the SYN-ACK origin
/// check), and nothing else.
#[classifier]
pub fn syn_egress(ctx: TcContext) -> i32 {
    record_syn(&ctx);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn record_syn(ctx: &TcContext) {
    let mut tcp = MaybeUninit::<TcpPacket>::uninit();
    if parse_flagged(ctx, synack_origin::is_syn, &mut tcp) {
        // SAFETY: parse_flagged returned true, so parse wrote the whole packet.
        synack_origin::record_syn(ctx, unsafe { tcp.assume_init_ref() });
    }
}

/// Parses a packet for the classifiers that look at one kind of segment: only if its flags,
/// read in place where they can be, are `wanted` (the full parser's packets are not sorted
/// first: the caller checks their flags again).
#[inline(always)]
fn parse_flagged(
    ctx: &TcContext,
    wanted: impl Fn(u8) -> bool,
    out: &mut MaybeUninit<TcpPacket>,
) -> bool {
    let plain = match packet::plain_tcp(ctx) {
        Some(None) => return false,
        Some(Some(tcp)) if !wanted(tcp.flags) => return false,
        Some(Some(_)) => true,
        None => false,
    };
    parse(ctx, plain, out)
}

/// Ingress on this host's end of another network namespace's veth (`--netns all`): that
/// namespace's SYN-ACKs, which to a client on this host never leave by an egress hook, are
/// sampled here when they answer a SYN recorded as it left by the same veth. Nothing else of
/// the namespace's traffic is looked at: its handshakes and per-port counts are its own.
#[classifier]
pub fn synack_from_netns(ctx: TcContext) -> i32 {
    sample_synack_in(&ctx);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn sample_synack_in(ctx: &TcContext) {
    let mut tcp = MaybeUninit::<TcpPacket>::uninit();
    if !parse_flagged(ctx, synack::is_synack, &mut tcp) {
        return;
    }
    // SAFETY: parse_flagged returned true, so parse wrote the whole packet.
    let tcp = unsafe { tcp.assume_init_ref() };
    if synack::is_synack(tcp.flags) && synack_origin::admits(ctx, Direction::Ingress, tcp, 0) {
        synack::emit(ctx, Direction::Ingress, tcp);
    }
}

/// Does nothing: the baseline that `cargo xtask bench` measures the classifiers against.
#[classifier]
pub fn baseline(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

// Kernel TCP signals beside the packets (BTF tracepoints), filtered to the monitored
// network namespace.

#[btf_tracepoint(function = "tcp_retransmit_synack")]
pub fn tcp_retransmit_synack(ctx: BtfTracePointContext) -> i32 {
    tcp_events::retransmit_synack(&ctx);
    0
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: BtfTracePointContext) -> i32 {
    tcp_events::send_reset(&ctx);
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    tcp_events::receive_reset(&ctx);
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    tcp_events::inet_sock_set_state(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
