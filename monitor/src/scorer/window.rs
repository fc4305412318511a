//! Fixed-size per-service state: the sample ring and the 4-tuple table used to drop
//! retransmitted SYN-ACKs and to collect same-4-tuple reuses for the clock check.

use std::net::SocketAddr;

use super::IsnObservation;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub isn: u32,
    pub ts_ns: u64,
    pub syncookie: bool,
}

/// The last `capacity` samples, oldest overwritten first.
pub struct SampleWindow {
    ring: Vec<Sample>,
    capacity: usize,
    next: usize,
}

impl SampleWindow {
    pub fn new(capacity: usize) -> Self {
        Self {
            ring: Vec::with_capacity(capacity),
            capacity,
            next: 0,
        }
    }

    pub fn push(&mut self, sample: Sample) {
        if self.ring.len() < self.capacity {
            self.ring.push(sample);
        } else {
            self.ring[self.next] = sample;
        }
        self.next = (self.next + 1) % self.capacity;
    }

    /// The samples, oldest first.
    pub fn in_order(&self) -> Vec<Sample> {
        if self.ring.len() < self.capacity {
            return self.ring.clone();
        }
        let (newer, older) = self.ring.split_at(self.next);
        older.iter().chain(newer).copied().collect()
    }
}

/// Two SYN-ACKs on the same 4-tuple: how far the ISN moved and how much time passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReusePair {
    pub isn_advance: u32,
    pub elapsed_ns: u64,
}

pub enum TupleVerdict {
    /// First SYN-ACK on this 4-tuple (as far as the table remembers).
    New,
    /// Same 4-tuple and same client ISN: a retransmission of a SYN-ACK already counted.
    Retransmit,
    /// Same 4-tuple, new client ISN: a new connection reusing the tuple.
    Reused,
}

#[derive(Clone, Copy, Default)]
struct TupleSlot {
    key: u64,
    peer_isn: u32,
    isn: u32,
    ts_ns: u64,
}

const REUSE_PAIRS_KEPT: usize = 256;

/// Direct-mapped table of recent 4-tuples. A collision evicts the older tuple, which at worst
/// lets one retransmit or reuse through as a new sample; the table is 2× the window so that
/// is rare.
pub struct TupleTable {
    slots: Vec<TupleSlot>,
    reuses: Vec<ReusePair>,
    next_reuse: usize,
    /// The last server seen and its half of the key: a service's SYN-ACKs all come from one.
    server: Option<(SocketAddr, u64)>,
}

impl TupleTable {
    pub fn new(window: usize) -> Self {
        Self {
            slots: vec![TupleSlot::default(); (window * 2).next_power_of_two()],
            reuses: Vec::with_capacity(REUSE_PAIRS_KEPT),
            next_reuse: 0,
            server: None,
        }
    }

    pub fn classify(&mut self, obs: &IsnObservation) -> TupleVerdict {
        let key = tuple_key(self.server_half(&obs.server), &obs.server, &obs.client);
        let index = (key as usize) & (self.slots.len() - 1);
        let slot = self.slots[index];
        let verdict = if slot.key != key {
            TupleVerdict::New
        } else if slot.peer_isn == obs.peer_isn {
            return TupleVerdict::Retransmit;
        } else {
            self.record_reuse(ReusePair {
                isn_advance: obs.isn.wrapping_sub(slot.isn),
                elapsed_ns: obs.ts_ns.saturating_sub(slot.ts_ns),
            });
            TupleVerdict::Reused
        };
        self.slots[index] = TupleSlot {
            key,
            peer_isn: obs.peer_isn,
            isn: obs.isn,
            ts_ns: obs.ts_ns,
        };
        verdict
    }

    fn server_half(&mut self, server: &SocketAddr) -> u64 {
        match self.server {
            Some((known, half)) if known == *server => half,
            _ => {
                let half = server_half(server);
                self.server = Some((*server, half));
                half
            }
        }
    }

    fn record_reuse(&mut self, pair: ReusePair) {
        if self.reuses.len() < REUSE_PAIRS_KEPT {
            self.reuses.push(pair);
        } else {
            self.reuses[self.next_reuse] = pair;
        }
        self.next_reuse = (self.next_reuse + 1) % REUSE_PAIRS_KEPT;
    }

    pub fn reuse_pairs(&self) -> Vec<ReusePair> {
        self.reuses.clone()
    }
}

/// The start of `tuple_key`: the server address hashed.
fn server_half(server: &SocketAddr) -> u64 {
    let bits = address_bits(server);
    mix(mix(bits as u64 ^ 0x9e37_79b9_7f4a_7c15) ^ (bits >> 64) as u64)
}

/// A well-mixed non-zero 64-bit key for a 4-tuple (0 marks an empty slot), continuing from
/// the server's half.
fn tuple_key(server_half: u64, server: &SocketAddr, client: &SocketAddr) -> u64 {
    let client_bits = address_bits(client);
    let mut h = server_half;
    for word in [
        client_bits as u64,
        (client_bits >> 64) as u64,
        u64::from(server.port()) << 16 | u64::from(client.port()),
    ] {
        h = mix(h ^ word);
    }
    h | 1
}

fn address_bits(addr: &SocketAddr) -> u128 {
    match addr {
        SocketAddr::V4(v4) => u128::from(v4.ip().to_bits()) | 1 << 127,
        SocketAddr::V6(v6) => v6.ip().to_bits(),
    }
}

/// splitmix64's finaliser.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_keeps_the_newest_in_order() {
        let mut window = SampleWindow::new(3);
        for isn in 0..5 {
            window.push(Sample {
                isn,
                ts_ns: u64::from(isn),
                syncookie: false,
            });
        }
        let isns: Vec<u32> = window.in_order().iter().map(|s| s.isn).collect();
        assert_eq!(isns, [2, 3, 4]);
    }
}
