//! One anomaly event of the kernel's handshake tracker, decoded: also the line format of the
//! event log.

use std::{fmt, net::SocketAddr};

use seqwatch_common::{
    Direction,
    handshake::{AnomalyEvent, AnomalyKind, Expects},
};
use serde::{Serialize, Serializer};

use crate::{
    kernel::records::socket_address,
    util::clock::{Clock, WallTime},
};

/// One anomaly, decoded. Also the line format of `--event-log`. Nothing is formatted until a
/// line is written: most events of a flood are only counted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Anomaly {
    /// RFC 3339, UTC, from the kernel's monotonic timestamp.
    pub time: WallTime,
    pub kind: &'static str,
    /// The local side: the listener on ingress, the sender on egress; for
    /// `unsolicited_synack`, the server it claims to come from (the service whose ISN samples
    /// it would have forged; the local side is a port nobody listens on).
    pub service: SocketAddr,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub direction: &'static str,
    pub ifindex: u32,
    /// TCP flags as letters: F S R P A U E C.
    pub flags: FlagLetters,
    pub seq: u32,
    pub ack: u32,
    pub payload_len: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_seq: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_ack: Option<u32>,
    #[serde(skip)]
    pub ts_ns: u64,
    #[serde(skip)]
    pub anomaly_kind: AnomalyKind,
}

impl Anomaly {
    /// `None` for a kind this build does not know (never expected from our program).
    pub fn from_event(event: &AnomalyEvent, clock: &Clock) -> Option<Self> {
        let kind = AnomalyKind::from_u8(event.kind)?;
        let source = socket_address(event.family, event.saddr, event.sport);
        let destination = socket_address(event.family, event.daddr, event.dport);
        let direction = Direction::from_u8(event.direction)?;
        let service = match (direction, kind) {
            (Direction::Egress, _) | (_, AnomalyKind::UnsolicitedSynAck) => source,
            (Direction::Ingress, _) => destination,
        };
        let (expected_seq, expected_ack) = match kind.expects() {
            Expects::Nothing => (None, None),
            Expects::Seq => (Some(event.expected_seq), None),
            Expects::SeqAndAck => (Some(event.expected_seq), Some(event.expected_ack)),
        };
        Some(Anomaly {
            time: clock.wall_time(event.ts_ns),
            kind: kind.as_str(),
            service,
            source,
            destination,
            direction: direction.as_str(),
            ifindex: event.ifindex,
            flags: FlagLetters(event.flags),
            seq: event.seq,
            ack: event.ack,
            payload_len: event.payload_len,
            expected_seq,
            expected_ack,
            ts_ns: event.ts_ns,
            anomaly_kind: kind,
        })
    }
}

/// TCP flags, written as letters: F S R P A U E C.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlagLetters(pub u8);

impl fmt::Display for FlagLetters {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (bit, letter) in b"FSRPAUEC".iter().enumerate() {
            if self.0 & (1 << bit) != 0 {
                write!(formatter, "{}", char::from(*letter))?;
            }
        }
        Ok(())
    }
}

impl Serialize for FlagLetters {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_readable() {
        assert_eq!(FlagLetters(0x12).to_string(), "SA");
        assert_eq!(FlagLetters(0x29).to_string(), "FPU");
    }
}
