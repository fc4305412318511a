//! Seqwatch's kernel side. One detector per module; this file only names the entry points.
#![no_std]
#![no_main]
#![allow(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "aya's #[classifier] expands to an extern fn taking the raw __sk_buff pointer"
)]

mod handshake;
mod packet;
mod synack;
mod tcp_events;

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    macros::{classifier, tracepoint},
    programs::{TcContext, TracePointContext},
};
use seqwatch_common::Direction;

// Every classifier returns TC_ACT_UNSPEC (tcx: "next"): the packet goes on unchanged to
// whatever comes after us, and we never drop, redirect or rewrite it. Each runs the SYN-ACK
// sampler, then the handshake anomaly tracker.

#[classifier]
pub fn synack_egress(ctx: TcContext) -> i32 {
    synack::observe(&ctx, Direction::Egress);
    handshake::observe(&ctx, Direction::Egress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn synack_ingress(ctx: TcContext) -> i32 {
    synack::observe(&ctx, Direction::Ingress);
    handshake::observe(&ctx, Direction::Ingress);
    TC_ACT_UNSPEC
}

/// Does nothing: the baseline that `cargo xtask bench` measures the classifiers against.
#[classifier]
pub fn baseline(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

// Kernel TCP signals beside the packets, filtered to the monitored network namespace.

#[tracepoint(category = "tcp", name = "tcp_retransmit_synack")]
pub fn tcp_retransmit_synack(ctx: TracePointContext) -> u32 {
    tcp_events::retransmit_synack(&ctx);
    0
}

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    tcp_events::send_reset(&ctx);
    0
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    tcp_events::receive_reset(&ctx);
    0
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    tcp_events::inet_sock_set_state(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
