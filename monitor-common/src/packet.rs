//! The classifiers' counters: every packet they run on passes through them, whichever
//! detector it is for (packets seen, fragments skipped, parse errors by reason), with slots
//! for the detectors that count in the kernel (SYN-ACKs sampled, records dropped, the origin
//! check's outcomes).

/// Indices of the per-CPU counter array `PACKET_COUNTERS`; userspace sums the CPUs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    PacketsSeen = 0,
    SynAcks,
    RingbufDropped,
    /// IPv4 or IPv6 fragments after the first carry no TCP header: skipped, not an error.
    NonFirstFragment,
    ParseTruncated,
    ParseIpVersionMismatch,
    ParseIpv4BadIhl,
    ParseIpv6ExtTooDeep,
    ParseVlanTooDeep,
    ParseTcpBadDataOffset,
    /// SYNs leaving by a monitored interface whose answer the origin check waits for
    /// (`crate::synack_origin`; ingress sampling on).
    SynsRecorded,
    /// Ingress SYN-ACKs answering no SYN recorded on their 4-tuple and interface: reported as
    /// anomalies, never sampled.
    SynAcksUnsolicited,
    /// Egress SYN-ACKs this host forwarded (they came in by an interface) while ingress
    /// sampling is on: judged where they came in, not sampled again.
    SynAcksForwarded,
}

impl Counter {
    pub const COUNT: u32 = Counter::SynAcksForwarded as u32 + 1;

    /// Parse-failure counters and their `reason` label.
    pub const PARSE_ERRORS: [(Counter, &'static str); 6] = [
        (Counter::ParseTruncated, "truncated"),
        (Counter::ParseIpVersionMismatch, "ip_version_mismatch"),
        (Counter::ParseIpv4BadIhl, "ipv4_bad_ihl"),
        (Counter::ParseIpv6ExtTooDeep, "ipv6_ext_too_deep"),
        (Counter::ParseVlanTooDeep, "vlan_too_deep"),
        (Counter::ParseTcpBadDataOffset, "tcp_bad_data_offset"),
    ];
}
