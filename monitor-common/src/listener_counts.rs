//! Per listening port handshake counters: SYNs received and SYN-ACKs sent (TC classifiers) and
//! handshakes completed (`sock:inet_sock_set_state`). Userspace gives each port it counts a
//! small slot number in `LISTENER_PORT_SLOTS` (one byte per TCP port, eight ports to a `u64`
//! word); the programs add to that slot's counters in `LISTENER_SLOT_COUNTS`, a per-CPU array
//! of [`SLOTS`] entries. Slot 0 means "not counted": a port userspace has not given a slot
//! costs the programs one array read and nothing else.

/// Ports whose slot numbers share one word of `LISTENER_PORT_SLOTS`.
const PORTS_PER_WORD: u32 = 8;
/// Words of `LISTENER_PORT_SLOTS`: every TCP port, a byte each.
pub const SLOT_WORDS: u32 = (1 << 16) / PORTS_PER_WORD;
/// Counter slots of `LISTENER_SLOT_COUNTS`: 0 (never written), then the ports'.
pub const SLOTS: u32 = 66;

/// The word of `LISTENER_PORT_SLOTS` that holds the port's slot number.
#[inline(always)]
pub fn slot_word(port: u16) -> u32 {
    u32::from(port) / PORTS_PER_WORD
}

/// The port's slot number, from its word.
#[inline(always)]
pub fn slot_in(word: u64, port: u16) -> u32 {
    ((word >> byte_shift(port)) & 0xff) as u32
}

/// The word with the port's slot number set to `slot` (the other ports' unchanged).
pub fn with_slot(word: u64, port: u16, slot: u8) -> u64 {
    let shift = byte_shift(port);
    (word & !(0xff << shift)) | (u64::from(slot) << shift)
}

#[inline(always)]
fn byte_shift(port: u16) -> u32 {
    (u32::from(port) % PORTS_PER_WORD) * 8
}

/// One slot's counters on one CPU (userspace sums the CPUs).
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

    #[test]
    fn a_port_slot_number_is_its_own_byte_of_its_word() {
        let word = with_slot(with_slot(0, 8080, 5), 8081, 65);
        assert_eq!(slot_word(8080), slot_word(8081));
        assert_ne!(slot_word(8080), slot_word(8088));
        assert_eq!((slot_in(word, 8080), slot_in(word, 8081)), (5, 65));
        assert_eq!(slot_in(word, 8087), 0);
        let word = with_slot(word, 8080, 0);
        assert_eq!((slot_in(word, 8080), slot_in(word, 8081)), (0, 65));
        assert_eq!(slot_in(with_slot(0, 65535, 255), 65535), 255);
    }
}
