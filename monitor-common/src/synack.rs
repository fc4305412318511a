//! SYN-ACK sampler: one ring-buffer record per SYN-ACK, and the per-CPU counters beside it.

/// The SYN-ACK records go to one ring buffer per CPU, which userspace creates and puts in the
/// `SYNACK_RINGS` array: SYN-ACKs sent on different CPUs then never take one ring's lock nor
/// write its producer position, cache lines that would otherwise move between the CPUs on
/// every record (on two CPUs, most of a record's real cost). Together the rings take about
/// this many bytes: 2 MiB holds about 18 700 records of [`SynAckRecord`] (104 bytes and the
/// ring's 8-byte header each), enough to ride out a burst while the daemon is descheduled.
pub const RING_BYTES_TOTAL: u32 = 2 << 20;
/// The smallest ring of a CPU: about 2 300 records.
pub const RING_BYTES_MIN: u32 = 256 << 10;
/// Slots of `SYNACK_RINGS`, the CPU numbers a kernel can have (Debian's `CONFIG_NR_CPUS`).
pub const MAX_CPUS: u32 = 8192;

/// The size of each CPU's ring with `cpus` possible CPUs: an equal share of
/// [`RING_BYTES_TOTAL`], at least [`RING_BYTES_MIN`], rounded down to a power of two (the
/// kernel's requirement).
pub const fn ring_bytes_per_cpu(cpus: u32) -> u32 {
    let share = RING_BYTES_TOTAL / if cpus == 0 { 1 } else { cpus };
    let share = if share < RING_BYTES_MIN {
        RING_BYTES_MIN
    } else {
        share
    };
    1 << share.ilog2()
}

/// `family` values of [`SynAckRecord`].
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// TCP options take at most 40 bytes (data offset 15 words).
pub const MAX_TCP_OPTIONS: usize = 40;

/// One SYN-ACK as the TC classifier saw it. Addresses are network byte order, IPv4 in the first
/// four bytes; every other integer is host byte order. The TCP options travel raw and are
/// summarized in userspace: walking them in the kernel costs a loop the verifier must unroll.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynAckRecord {
    /// When the SYN-ACK was sent, CLOCK_MONOTONIC (as `bpf_ktime_get_ns()`; on egress often
    /// the kernel's own stamp on the packet).
    pub ts_ns: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub ifindex: u32,
    pub seq: u32,
    pub ack: u32,
    pub sport: u16,
    pub dport: u16,
    pub window: u16,
    pub family: u8,
    /// [`crate::Direction`] as u8.
    pub direction: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// Bytes of `options` that are the packet's (0..=40).
    pub options_len: u8,
    pub options: [u8; MAX_TCP_OPTIONS],
    pub _pad: [u8; 2],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data, every bit pattern valid, no padding the kernel leaves unset.
    unsafe impl aya::Pod for super::SynAckRecord {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cpu_gets_a_power_of_two_share_of_the_ring_bytes() {
        assert_eq!(ring_bytes_per_cpu(1), 2 << 20);
        assert_eq!(ring_bytes_per_cpu(2), 1 << 20);
        assert_eq!(ring_bytes_per_cpu(3), 512 << 10);
        assert_eq!(ring_bytes_per_cpu(8), 256 << 10);
        assert_eq!(ring_bytes_per_cpu(MAX_CPUS), RING_BYTES_MIN);
        assert_eq!(ring_bytes_per_cpu(0), 2 << 20);
    }

    #[test]
    fn record_layout_has_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<SynAckRecord>(), 104);
        assert_eq!(core::mem::align_of::<SynAckRecord>(), 8);
    }
}
