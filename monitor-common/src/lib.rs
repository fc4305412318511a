//! Wire types shared by the kernel programs (`seqwatch-ebpf`) and the daemon (`seqwatch`).
//!
//! Every type here is `#[repr(C)]`, plain old data, and laid out without implicit padding so
//! that the bytes the kernel writes are exactly the bytes userspace reads.
#![no_std]

pub mod handshake;
pub mod listener_counts;
pub mod packet;
pub mod synack;
pub mod synack_origin;
pub mod tcp_events;
pub mod tls;

/// Where a TC program is attached, as seen from this host.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Packets this host sends: its own services' SYN-ACKs.
    Egress = 0,
    /// Packets this host receives: remote servers' SYN-ACKs (gateway or client view).
    Ingress = 1,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Egress, Direction::Ingress];

    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Direction::Egress),
            1 => Some(Direction::Ingress),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
        }
    }
}
