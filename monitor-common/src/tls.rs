//! TLS record-framing check: the event the kernel sends when bytes that are not a TLS record
//! header stand where one must start (plaintext on an encrypted session) and when a TLS session
//! ends, the session end kinds, the configuration flags and the per-CPU counters.

/// Ring buffer for [`TlsEvent`]s (about 11 000 events): one per session end, one per violation.
pub const TLS_RINGBUF_BYTES: u32 = 1 << 20;

/// Entries of the per-port filter `TLS_PORT_FILTER`: one per TCP port.
pub const PORT_FILTER_SLOTS: u32 = 1 << 16;
/// `TLS_PORT_FILTER` value of a port configured as a TLS port. The kernel's own entries (tags
/// of flows whose first payload is watched for a TLS hello) always have bit 1 set, so they
/// never equal it.
pub const PORT_CONFIGURED: u64 = 1;

/// Bits of `TLS_CONFIG[0]`.
pub const CONFIG_DETECT_HELLO: u32 = 1;
/// Copy up to [`PREFIX_BYTES`] of the offending bytes into the event (off by default: payload
/// bytes otherwise never leave the kernel).
pub const CONFIG_LOG_PREFIX: u32 = 2;

/// Bytes of the optional hex prefix.
pub const PREFIX_BYTES: usize = 16;

/// [`TlsEvent::kind`] values.
pub const EVENT_PLAINTEXT: u8 = 0;
pub const EVENT_SESSION_END: u8 = 1;

/// One TLS event. Addresses and ports are the packet's (network byte order addresses, IPv4 in
/// the first four bytes); every other integer is host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub ts_ns: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// The first [`Self::prefix_len`] bytes at `seq` (plaintext events with the switch on).
    pub prefix: [u8; PREFIX_BYTES],
    pub ifindex: u32,
    /// Plaintext: the sequence number where a record header had to start. Session end: the
    /// seq of the segment that ended it.
    pub seq: u32,
    /// Plaintext: bytes from the flow's first payload byte (or from the resync point when
    /// [`Self::from_start`] is 0) to `seq`.
    pub stream_offset: u32,
    pub sport: u16,
    pub dport: u16,
    /// `crate::synack::FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
    /// [`crate::Direction`] of the packet, as u8.
    pub direction: u8,
    /// [`EVENT_PLAINTEXT`] or [`EVENT_SESSION_END`].
    pub kind: u8,
    /// [`SessionEnd`] as u8 (session end events).
    pub end: u8,
    /// 1 when this host is the TLS server of the flow (the service is the local side).
    pub local_is_server: u8,
    /// 1 when `stream_offset` counts from the flow's first payload byte.
    pub from_start: u8,
    pub prefix_len: u8,
    pub _pad: u8,
}

/// Defines [`SessionEnd`] from one list: the wire value, the `end` label and its meaning.
macro_rules! session_ends {
    ($($variant:ident = $value:literal, $name:literal, $description:literal;)*) => {
        /// How a TLS session ended. The numbers are the wire values.
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum SessionEnd {
            $($variant = $value,)*
        }

        impl SessionEnd {
            pub const ALL: &'static [SessionEnd] = &[$(SessionEnd::$variant,)*];

            pub const fn from_u8(value: u8) -> Option<Self> {
                match value {
                    $($value => Some(SessionEnd::$variant),)*
                    _ => None,
                }
            }

            /// The `end` label of `seqwatch_tls_sessions_total`.
            pub const fn as_str(self) -> &'static str {
                match self { $(SessionEnd::$variant => $name,)* }
            }

            pub const fn description(self) -> &'static str {
                match self { $(SessionEnd::$variant => $description,)* }
            }
        }
    };
}

session_ends! {
    Fin = 0, "fin",
        "a FIN (either side) and none of the endings below";
    Alert = 1, "alert",
        "the last record this host sent was an unencrypted alert (2-byte body): a handshake \
         failure; encrypted alerts (every TLS 1.3 alert, TLS 1.2 close_notify) look like data";
    Reset = 2, "reset",
        "a RST (either side) with no application data from this host in the last second";
    ResetAfterData = 3, "reset_after_data",
        "a RST within a second after this host sent application data";
    PlaintextThenCollapse = 4, "plaintext_then_collapse",
        "any end within 10 s after bytes that are not a record header were sent on the session";
}

impl SessionEnd {
    pub const COUNT: usize = SessionEnd::PlaintextThenCollapse as usize + 1;
}

/// A RST this soon after application data is `reset_after_data`.
pub const RESET_AFTER_DATA_NS: u64 = 1_000_000_000;
/// An end this soon after plaintext is `plaintext_then_collapse`.
pub const COLLAPSE_WINDOW_NS: u64 = 10_000_000_000;

/// Indices of the per-CPU counter array `TLS_COUNTERS`; userspace sums the CPUs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsCounter {
    /// TLS events lost on a full ring buffer.
    EventsDropped = 0,
    /// Record headers checked.
    RecordsChecked,
    /// Flows whose record boundaries became unknown (a gap, a violation, or first seen
    /// mid-stream) until a segment starting with a record header resynchronised them.
    TrackingLost,
    /// Flows resynchronised on a segment that starts with a record header.
    Resynced,
}

impl TlsCounter {
    pub const COUNT: u32 = TlsCounter::Resynced as u32 + 1;
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data, every bit pattern valid, no padding the kernel leaves unset.
    unsafe impl aya::Pod for super::TlsEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_layout_has_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<TlsEvent>(), 80);
        assert_eq!(core::mem::align_of::<TlsEvent>(), 8);
    }

    #[test]
    fn ends_round_trip() {
        assert_eq!(SessionEnd::ALL.len(), SessionEnd::COUNT);
        for (index, end) in SessionEnd::ALL.iter().enumerate() {
            assert_eq!(*end as usize, index);
            assert_eq!(SessionEnd::from_u8(*end as u8), Some(*end));
        }
        assert_eq!(SessionEnd::from_u8(SessionEnd::COUNT as u8), None);
    }
}
