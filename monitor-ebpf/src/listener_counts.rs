//! Per listening port handshake counters (see `seqwatch_common::listener_counts`): one increment
//! per SYN in, SYN-ACK out and handshake completed, in the counters of the slot userspace gave
//! the local port. Two array lookups, both inlined by the verifier (no helper call, no hash);
//! a port without a slot (0: not listening, as far as userspace knows) stops after the first.

use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray},
};
use seqwatch_common::{
    Direction,
    listener_counts::{PortCounts, SLOT_WORDS, SLOTS, slot_in, slot_word},
};

use crate::packet::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TcpPacket};

/// Each TCP port's slot number, a byte each, written by userspace only.
#[map]
static LISTENER_PORT_SLOTS: Array<u64> = Array::with_max_entries(SLOT_WORDS, 0);

#[map]
static LISTENER_SLOT_COUNTS: PerCpuArray<PortCounts> = PerCpuArray::with_max_entries(SLOTS, 0);

/// Counts a parsed segment if it is a SYN coming in (for its destination port) or a SYN-ACK
/// going out (for its source port). ECN bits are ignored: ECN-setup SYNs carry ECE and CWR.
#[inline(always)]
pub fn count_segment(direction: Direction, tcp: &TcpPacket) {
    let handshake_flags = tcp.flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN);
    match (direction, handshake_flags) {
        (Direction::Ingress, TCP_SYN) => add(tcp.dport, |counts| &mut counts.syns_received),
        (Direction::Egress, flags) if flags == TCP_SYN | TCP_ACK => {
            add(tcp.sport, |counts| &mut counts.synacks_sent);
        }
        _ => {}
    }
}

/// Counts a socket of `port` (host order) that went from SYN_RECV to ESTABLISHED.
#[inline(always)]
pub fn count_completed(port: u16) {
    add(port, |counts| &mut counts.handshakes_completed);
}

/// Adds one to a counter of the port's slot, on this CPU. (A tracepoint program does not nest
/// in another, nor a classifier in another, and each counter has one writer kind.)
#[inline(always)]
fn add(port: u16, counter: impl FnOnce(&mut PortCounts) -> &mut u64) {
    let Some(word) = LISTENER_PORT_SLOTS.get(slot_word(port)) else {
        return;
    };
    let slot = slot_in(*word, port);
    if slot == 0 {
        return;
    }
    if let Some(counts) = LISTENER_SLOT_COUNTS.get_ptr_mut(slot) {
        // SAFETY: this CPU's copy of an array entry, valid for the program run.
        unsafe { *counter(&mut *counts) += 1 };
    }
}
