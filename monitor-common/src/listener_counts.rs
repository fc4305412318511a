//! Per local port handshake counters: SYNs received and SYN-ACKs sent (TC classifiers) and
//! handshakes completed (`sock:inet_sock_set_state`), in one per-CPU array indexed by the
//! local port. The kernel counts every port; userspace reads only listening ports' slots.

/// Slots of `LISTENER_PORT_COUNTS`: one per TCP port.
pub const PORTS: u32 = 1 << 16;

/// One port's counters on one CPU (userspace sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounts {
    /// SYNs (no ACK, RST or FIN) arriving for the port, seen on ingress.
    pub syns_received: u64,
    /// SYN-ACKs leaving from the port, seen on egress.
    pub synacks_sent: u64,
    /// Sockets of the port that went from SYN_RECV to ESTABLISHED.
    pub handshakes_completed: u64,
}

impl PortCounts {
    /// Adds up two CPUs' (or two reads') counters.
    pub fn plus(self, other: PortCounts) -> PortCounts {
        PortCounts {
            syns_received: self.syns_received + other.syns_received,
            synacks_sent: self.synacks_sent + other.synacks_sent,
            handshakes_completed: self.handshakes_completed + other.handshakes_completed,
        }
    }

    /// `self - earlier`, field by field, never below zero.
    pub fn since(self, earlier: PortCounts) -> PortCounts {
        PortCounts {
            syns_received: self.syns_received.saturating_sub(earlier.syns_received),
            synacks_sent: self.synacks_sent.saturating_sub(earlier.synacks_sent),
            handshakes_completed: self
                .handshakes_completed
                .saturating_sub(earlier.handshakes_completed),
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data, every bit pattern valid, no padding.
    unsafe impl aya::Pod for super::PortCounts {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<PortCounts>(), 24);
    }
}
