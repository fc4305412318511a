//! SYN-ACK origin check: with ingress sampling on, a SYN-ACK arriving at an interface is
//! sampled only if it answers a SYN that left by that interface (one this host sent or, on a
//! gateway, forwarded). The kernel keeps each SYN's expected answer in a bounded table.

/// Slots of the SYN record table (`SYN_RECORDS`, 16 bytes each: 2 MiB), a power of two. A SYN
/// takes the slot of its 4-tuple and interface; with n SYNs waiting for their SYN-ACK, a new
/// one takes the slot of one of them with probability n / 131 072, and that SYN's answer is
/// then refused (counted as unsolicited, never scored).
pub const SYN_RECORD_SLOTS: u32 = 1 << 17;

/// Words a SYN record is placed by: this host's end of the 4-tuple (4 address words), the
/// remote end (4), both ports, the family, and the interface the SYN left by. Hashed with
/// `crate::handshake::jhash` and a seed the daemon draws at random.
pub const RECORD_KEY_WORDS: usize = 11;

/// The slot of a record key's hash.
pub const fn slot_of(hash: u32) -> u32 {
    hash & (SYN_RECORD_SLOTS - 1)
}

/// Interfaces at most in `JUDGED_AT_INGRESS`, the interfaces where what comes in is judged by
/// an ingress classifier: each is one veth of a container on a container host. An interface
/// past it is not given the ingress sampler (the attacher says so).
pub const JUDGED_INTERFACES: u32 = 4096;

/// `JUDGED_AT_INGRESS` values: the SYN-ACKs coming in by the interface are judged (sampled or
/// refused) there, so that a forwarded one is not sampled again where it leaves...
pub const JUDGES_SYNACKS: u32 = 1;
/// ...and so are all its TCP segments (the handshake tracker), so that a forwarded one is not
/// judged again either.
pub const JUDGES_SEGMENTS: u32 = 2;
