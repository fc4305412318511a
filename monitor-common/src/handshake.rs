//! Handshake anomaly engine: the event record the kernel tracker sends for every anomaly, the
//! anomaly kinds (the single source of the table in `docs/anomalies.md`), and the per-CPU
//! counters beside them.

/// Ring buffer for [`AnomalyEvent`]s, separate from the SYN-ACK samples so that an anomaly
/// flood cannot starve the ISN scorer (about 14 000 events).
pub const ANOMALY_RINGBUF_BYTES: u32 = 1 << 20;

/// One anomalous TCP segment as the TC tracker saw it. Addresses are network byte order, IPv4
/// in the first four bytes; every other integer is host byte order. `expected_*` are only
/// meaningful for kinds whose [`AnomalyKind::expects`] says so, and 0 otherwise.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnomalyEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub ts_ns: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub ifindex: u32,
    pub seq: u32,
    pub ack: u32,
    pub expected_seq: u32,
    pub expected_ack: u32,
    pub sport: u16,
    pub dport: u16,
    /// TCP payload bytes (from the IP length, so Ethernet padding is not counted).
    pub payload_len: u16,
    /// `crate::synack::FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
    /// [`crate::Direction`] as u8.
    pub direction: u8,
    /// [`AnomalyKind`] as u8.
    pub kind: u8,
    /// The TCP flags byte (CWR ECE URG ACK PSH RST SYN FIN).
    pub flags: u8,
    pub _pad: [u8; 2],
}

/// What `expected_seq` / `expected_ack` of an event hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expects {
    Nothing,
    Seq,
    SeqAndAck,
}

/// Defines [`AnomalyKind`] and its table from one list, so that the enum, the names and the
/// documentation cannot disagree.
macro_rules! anomaly_kinds {
    ($(
        $variant:ident = $value:literal, $name:literal, $expects:ident,
        suricata: $suricata:literal, zeek: $zeek:literal,
        $description:literal;
    )*) => {
        /// Every anomaly the tracker reports. The numbers are the wire values.
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum AnomalyKind {
            $($variant = $value,)*
        }

        impl AnomalyKind {
            pub const ALL: &'static [AnomalyKind] = &[$(AnomalyKind::$variant,)*];

            pub const fn from_u8(value: u8) -> Option<Self> {
                match value {
                    $($value => Some(AnomalyKind::$variant),)*
                    _ => None,
                }
            }

            /// The stable snake_case name: the `kind` label and the event log's `kind`.
            pub const fn as_str(self) -> &'static str {
                match self { $(AnomalyKind::$variant => $name,)* }
            }

            pub const fn description(self) -> &'static str {
                match self { $(AnomalyKind::$variant => $description,)* }
            }

            /// Suricata `stream-event`/decoder names that correspond (empty if none).
            pub const fn suricata(self) -> &'static str {
                match self { $(AnomalyKind::$variant => $suricata,)* }
            }

            /// Zeek weirds (or conn.log history letters) that correspond (empty if none).
            pub const fn zeek(self) -> &'static str {
                match self { $(AnomalyKind::$variant => $zeek,)* }
            }

            pub const fn expects(self) -> Expects {
                match self { $(AnomalyKind::$variant => Expects::$expects,)* }
            }
        }
    };
}

anomaly_kinds! {
    SynWithData = 0, "syn_with_data", Nothing,
        suricata: "", zeek: "SYN_with_data",
        "SYN (no ACK) carrying payload without a TCP Fast Open option (TFO SYNs are counted apart)";
    SynFin = 1, "syn_fin", Nothing,
        suricata: "stream.fin_syn", zeek: "history q",
        "SYN and FIN in one segment";
    SynRst = 2, "syn_rst", Nothing,
        suricata: "", zeek: "TCP_christmas, history q",
        "SYN and RST in one segment";
    NullFlags = 3, "null_flags", Nothing,
        suricata: "", zeek: "",
        "no flag set at all (NULL scan)";
    XmasFlags = 4, "xmas_flags", Nothing,
        suricata: "", zeek: "",
        "FIN, PSH and URG without ACK (Xmas scan)";
    InvalidFlags = 5, "invalid_flags", Nothing,
        suricata: "", zeek: "baroque_SYN, history i",
        "any other illegal set: FIN, PSH or URG without ACK, RST with FIN, SYN with URG";
    HandshakeAckWrongAck = 6, "handshake_ack_wrong_ack", SeqAndAck,
        suricata: "stream.3whs_right_seq_wrong_ack_evasion", zeek: "",
        "third packet with the right seq but an ack other than our ISN+1: a blind-spoof guess";
    HandshakeAckWrongSeq = 7, "handshake_ack_wrong_seq", SeqAndAck,
        suricata: "", zeek: "",
        "third packet acking our ISN+1 but with a seq outside the client's window";
    HandshakeAckWrongSeqAndAck = 8, "handshake_ack_wrong_seq_and_ack", SeqAndAck,
        suricata: "stream.3whs_wrong_seq_wrong_ack", zeek: "",
        "third packet with both seq and ack wrong";
    DataBeforeHandshake = 9, "data_before_handshake", Nothing,
        suricata: "stream.3whs_ack_data_inject", zeek: "data_before_established",
        "payload from the client before our SYN-ACK was sent";
    FinBeforeHandshake = 10, "fin_before_handshake", Nothing,
        suricata: "", zeek: "inappropriate_FIN, conn_state SH",
        "FIN from the client before the handshake completed";
    AckWithoutSynAck = 11, "ack_without_synack", Nothing,
        suricata: "", zeek: "",
        "pure ACK for a handshake we never answered: it acks a SYN-ACK that was never sent";
    SynRetransmitDifferentIsn = 12, "syn_retransmit_different_isn", Seq,
        suricata: "stream.3whs_syn_resend_diff_seq_on_syn_recv", zeek: "SYN_seq_jump",
        "SYN repeated during the handshake with a different ISN";
    SynAckRetransmitDifferentSeq = 13, "synack_retransmit_different_seq", SeqAndAck,
        suricata: "stream.3whs_synack_resend_with_diff_seq", zeek: "",
        "our SYN-ACK repeated with a different ISN";
    SynAckRetransmitDifferentAck = 14, "synack_retransmit_different_ack", SeqAndAck,
        suricata: "stream.3whs_synack_resend_with_different_ack", zeek: "",
        "our SYN-ACK repeated acking a different client ISN";
    SynAckToListener = 15, "synack_to_listener", Nothing,
        suricata: "stream.3whs_synack_in_wrong_direction, stream.3whs_synack_toserver_on_syn_recv",
        zeek: "connection_originator_SYN_ack",
        "a SYN-ACK arriving at one of our listening ports that answers no SYN which left by its interface on its 4-tuple (a simultaneous open's does); never scored";
    RstOutOfWindow = 16, "rst_out_of_window", Seq,
        suricata: "", zeek: "",
        "RST during the handshake whose seq is outside the window: a blind reset guess";
    SynOnEstablished = 17, "syn_on_established", Nothing,
        suricata: "stream.est_syn_resend, stream.est_syn_resend_diff_seq",
        zeek: "active_connection_reuse, SYN_inside_connection",
        "SYN on a 4-tuple whose handshake completed and that has not been closed";
    UnsolicitedSynAck = 18, "unsolicited_synack", Nothing,
        suricata: "stream.3whs_synack_with_wrong_ack, stream.3whs_synack_resend_with_diff_seq",
        zeek: "unsolicited_SYN_response",
        "any other arriving SYN-ACK that answers no such SYN: none left, it acks another ISN, or it is a second answer with another ISN; never scored";
}

impl AnomalyKind {
    pub const COUNT: usize = AnomalyKind::UnsolicitedSynAck as usize + 1;
}

/// Slots (ways) of the tracker's state table (`HANDSHAKE_SLOTS`, 64 bytes each: a key and a
/// state, a seal and a protection): a power of two; twice the entries of the 65 536-entry LRU
/// hash it replaced, in 8 MiB (that map locked 7.5), in sets of [`STATE_WAYS`].
pub const STATE_SLOTS: u32 = 1 << 17;

/// Ways of each set: a 4-tuple's state is in one of the [`STATE_WAYS`] slots of the set its
/// hash picks ([`state_set`]), 256 bytes side by side.
pub const STATE_WAYS: u32 = 4;
pub const STATE_SETS: u32 = STATE_SLOTS / STATE_WAYS;

/// The set of a 4-tuple's state, from its key's seeded [`jhash`].
#[inline(always)]
pub const fn state_set(hash: u32) -> u32 {
    hash & (STATE_SETS - 1)
}

/// The tracker's protection clock ticks every 2^30 ns (about 1.07 s) of `bpf_ktime_get_ns()`.
pub const PROTECTION_TICK_SHIFT: u32 = 30;

/// How long the kernel keeps a request socket whose SYN-ACK is never answered, in seconds:
/// the first SYN-ACK and `synack_retries` retransmissions (`net.ipv4.tcp_synack_retries`),
/// each after twice the wait of the one before from 1 s (`TCP_TIMEOUT_INIT`) up to at most
/// 120 s (`TCP_RTO_MAX`), then one last wait: 63 s for the default 5 retries.
pub fn request_lifetime_seconds(synack_retries: u8) -> u64 {
    (0..=u32::from(synack_retries))
        .map(|retry| 1u64.checked_shl(retry).unwrap_or(u64::MAX).min(120))
        .sum()
}

/// Protection clock ticks (see [`PROTECTION_TICK_SHIFT`]) that cover at least `seconds`
/// from any moment within a tick: the tracker protects an open handshake until the tick
/// after its SYN-ACK's plus this many.
pub fn protection_ticks(seconds: u64) -> u32 {
    let tick_ns = 1u64 << PROTECTION_TICK_SHIFT;
    let ticks = seconds.saturating_mul(1_000_000_000).div_ceil(tick_ns) + 1;
    u32::try_from(ticks).unwrap_or(u32::MAX)
}

/// Bob Jenkins' lookup3 `hashword` (the kernel's `jhash2`), for a few words: the state table's
/// slot of a 4-tuple is its key's hash, seeded, modulo [`STATE_SLOTS`]. Here, not in the
/// kernel crate, so that tests can aim two 4-tuples at one slot.
#[inline(always)]
pub fn jhash<const N: usize>(words: &[u32; N], seed: u32) -> u32 {
    let init = 0xdead_beef_u32
        .wrapping_add((N as u32) << 2)
        .wrapping_add(seed);
    let (mut a, mut b, mut c) = (init, init, init);
    let mut i = 0;
    while i + 3 < N {
        a = a.wrapping_add(words[i]);
        b = b.wrapping_add(words[i + 1]);
        c = c.wrapping_add(words[i + 2]);
        jhash_mix(&mut a, &mut b, &mut c);
        i += 3;
    }
    if N - i == 3 {
        c = c.wrapping_add(words[i + 2]);
    }
    if N - i >= 2 {
        b = b.wrapping_add(words[i + 1]);
    }
    if N > i {
        a = a.wrapping_add(words[i]);
        jhash_final(&mut a, &mut b, &mut c);
    }
    c
}

#[inline(always)]
fn jhash_mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c) ^ c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a) ^ a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b) ^ b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c) ^ c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a) ^ a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b) ^ b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

#[inline(always)]
fn jhash_final(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c = (*c ^ *b).wrapping_sub(b.rotate_left(14));
    *a = (*a ^ *c).wrapping_sub(c.rotate_left(11));
    *b = (*b ^ *a).wrapping_sub(a.rotate_left(25));
    *c = (*c ^ *b).wrapping_sub(b.rotate_left(16));
    *a = (*a ^ *c).wrapping_sub(c.rotate_left(4));
    *b = (*b ^ *a).wrapping_sub(a.rotate_left(14));
    *c = (*c ^ *b).wrapping_sub(b.rotate_left(24));
}

/// Indices of the per-CPU counter array `HANDSHAKE_COUNTERS`; userspace sums the CPUs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeCounter {
    /// Anomaly events lost on a full ring buffer.
    EventsDropped = 0,
    /// SYNs carrying data and a TCP Fast Open option: legitimate, counted apart.
    TfoSyns,
    /// Segments that went to the handshake state table: a lookup, or a new SYN's insert (the
    /// tracker's cost driver).
    StateLookups,
    /// A new handshake's state took the slot of a SYN-cookie handshake.
    EvictedCookie,
    /// ... of a SYN not answered (yet).
    EvictedUnanswered,
    /// ... of a completed handshake.
    EvictedCompleted,
    /// ... of an open handshake whose protection had run out.
    EvictedExpired,
    /// A new handshake not tracked: every way of its state set, or of its filter set, held a
    /// protected open handshake.
    StateRefused,
    /// ACKs a listener rejected that the tracker could not judge, of services
    /// `KERNEL_GUESSES` had no room for, or whose headers could not be read (counted as
    /// service "other").
    KernelGuessesUnkeyed,
}

impl HandshakeCounter {
    pub const COUNT: u32 = HandshakeCounter::KernelGuessesUnkeyed as u32 + 1;
}

/// Services `KERNEL_GUESSES` keeps apart (keyed by the local address and port the rejected
/// ACK was sent to); beyond, [`HandshakeCounter::KernelGuessesUnkeyed`].
pub const KERNEL_GUESS_SERVICES: u32 = 4096;

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data, every bit pattern valid, no padding the kernel leaves unset.
    unsafe impl aya::Pod for super::AnomalyEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_layout_has_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<AnomalyEvent>(), 72);
        assert_eq!(core::mem::align_of::<AnomalyEvent>(), 8);
    }

    #[test]
    fn protection_covers_the_kernels_request_lifetime() {
        assert_eq!(request_lifetime_seconds(5), 63, "the default");
        assert_eq!(request_lifetime_seconds(0), 1);
        assert_eq!(
            request_lifetime_seconds(8),
            127 + 120 + 120,
            "waits of at most 120 s"
        );
        assert_eq!(
            request_lifetime_seconds(255),
            1 + 2 + 4 + 8 + 16 + 32 + 64 + 249 * 120
        );
        let tick = 1u64 << PROTECTION_TICK_SHIFT;
        for seconds in [1, 63, 1000] {
            let ticks = u64::from(protection_ticks(seconds));
            // From the last nanosecond of a tick, protected until the start of tick + ticks.
            assert!((ticks - 1) * tick >= seconds * 1_000_000_000, "{seconds} s");
            assert!(
                (ticks - 2) * tick < seconds * 1_000_000_000,
                "{seconds} s: not more"
            );
        }
    }

    #[test]
    fn kinds_round_trip_and_names_are_unique_snake_case() {
        assert_eq!(AnomalyKind::ALL.len(), AnomalyKind::COUNT);
        for (index, kind) in AnomalyKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, index, "wire values are dense");
            assert_eq!(AnomalyKind::from_u8(*kind as u8), Some(*kind));
            let name = kind.as_str();
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            let same = AnomalyKind::ALL.iter().filter(|k| k.as_str() == name);
            assert_eq!(same.count(), 1, "{name} is unique");
        }
        assert_eq!(AnomalyKind::from_u8(AnomalyKind::COUNT as u8), None);
    }
}
