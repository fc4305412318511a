//! Per local port handshake counters (see `seqwatch_common::listener_counts`): one increment
//! of an array slot per SYN in, SYN-ACK out and handshake completed. The verifier inlines the
//! array lookup (no helper call, no hash), and the port cannot leave the array's bounds, so
//! every port is counted and userspace decides which ones become labels (listening ports only).

use aya_ebpf::{macros::map, maps::PerCpuArray};
use seqwatch_common::{
    Direction,
    listener_counts::{PORTS, PortCounts},
};

use crate::packet::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TcpPacket};

#[map]
static LISTENER_PORT_COUNTS: PerCpuArray<PortCounts> = PerCpuArray::with_max_entries(PORTS, 0);

/// Counts a parsed segment if it is a SYN coming in (for its destination port) or a SYN-ACK
/// going out (for its source port). ECN bits are ignored: ECN-setup SYNs carry ECE and CWR.
#[inline(always)]
pub fn count_segment(direction: Direction, tcp: &TcpPacket) {
    let handshake_flags = tcp.flags() & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN);
    let header = &tcp.tcp;
    match (direction, handshake_flags) {
        (Direction::Ingress, TCP_SYN) => {
            let port = u16::from_be_bytes([header[2], header[3]]);
            add(port, |counts| &mut counts.syns_received);
        }
        (Direction::Egress, flags) if flags == TCP_SYN | TCP_ACK => {
            let port = u16::from_be_bytes([header[0], header[1]]);
            add(port, |counts| &mut counts.synacks_sent);
        }
        _ => {}
    }
}

/// Counts a socket of `port` (host order) that went from SYN_RECV to ESTABLISHED.
#[inline(always)]
pub fn count_completed(port: u16) {
    add(port, |counts| &mut counts.handshakes_completed);
}

/// Adds one to a counter of the port's per-CPU slot. (A tracepoint program does not nest in
/// another, nor a classifier in another, and each counter has one writer kind.)
#[inline(always)]
fn add(port: u16, counter: impl FnOnce(&mut PortCounts) -> &mut u64) {
    if let Some(slot) = LISTENER_PORT_COUNTS.get_ptr_mut(u32::from(port)) {
        // SAFETY: this CPU's copy of an array slot, valid for the program run.
        unsafe { *counter(&mut *slot) += 1 };
    }
}
