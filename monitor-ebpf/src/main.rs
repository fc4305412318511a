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

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
