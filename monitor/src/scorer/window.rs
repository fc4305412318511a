//! Bounded per-service state: the sample ring and the 4-tuple table used to drop retransmitted
//! SYN-ACKs and to collect same-4-tuple reuses for the clock check. Both start small and grow
//! with the samples up to their bound, so a service seen a few times costs a few hundred
//! bytes, not the full window's.

use std::net::SocketAddr;

use super::IsnObservation;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub isn: u32,
    pub ts_ns: u64,
    pub syncookie: bool,
}

/// The last `capacity` samples, oldest overwritten first; memory grows with the samples.
pub struct SampleWindow {
    ring: Vec<Sample>,
    capacity: usize,
    next: usize,
}

impl SampleWindow {
    pub fn new(capacity: usize) -> Self {
        Self {
            ring: Vec::new(),
            capacity,
            next: 0,
        }
    }

    pub fn push(&mut self, sample: Sample) {
        if self.ring.len() < self.capacity {
            if self.ring.len() == self.ring.capacity() {
                // Doubling, but never past the window.
                let more = self.ring.len().max(4).min(self.capacity - self.ring.len());
                self.ring.reserve_exact(more);
            }
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
/// The 4-tuple table's first size; it doubles whenever it is half full, up to its bound.
const INITIAL_TUPLE_SLOTS: usize = 16;

/// Direct-mapped table of recent 4-tuples. A collision evicts the older tuple, which at worst
/// lets one retransmit or reuse through as a new sample; the table grows to 2× the window so
/// that is rare.
pub struct TupleTable {
    slots: Vec<TupleSlot>,
    /// Slots in use, and the most there may be.
    occupied: usize,
    max_slots: usize,
    reuses: Vec<ReusePair>,
    next_reuse: usize,
    /// The last server seen and its half of the key: a service's SYN-ACKs all come from one.
    server: Option<(SocketAddr, u64)>,
}

impl TupleTable {
    pub fn new(window: usize) -> Self {
        let max_slots = (window * 2).next_power_of_two();
        Self {
            slots: vec![TupleSlot::default(); INITIAL_TUPLE_SLOTS.min(max_slots)],
            occupied: 0,
            max_slots,
            reuses: Vec::new(),
            next_reuse: 0,
            server: None,
        }
    }

    pub fn classify(&mut self, obs: &IsnObservation) -> TupleVerdict {
        let key = tuple_key(self.server_half(&obs.server), &obs.server, &obs.client);
        let index = slot_index(key, self.slots.len());
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
        if slot.key == 0 {
            self.occupied += 1;
        }
        self.slots[index] = TupleSlot {
            key,
            peer_isn: obs.peer_isn,
            isn: obs.isn,
            ts_ns: obs.ts_ns,
        };
        if self.occupied * 2 > self.slots.len() && self.slots.len() < self.max_slots {
            self.grow();
        }
        verdict
    }

    /// Doubles the table. A tuple's slot gains one bit of its key, so tuples that had slots of
    /// their own still do.
    fn grow(&mut self) {
        let mut slots = vec![TupleSlot::default(); self.slots.len() * 2];
        let len = slots.len();
        for slot in self.slots.iter().filter(|slot| slot.key != 0) {
            slots[slot_index(slot.key, len)] = *slot;
        }
        self.slots = slots;
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

/// A key's slot in a table of `len` (a power of two) slots. Not its lowest bit, which is always
/// set ([`tuple_key`]).
fn slot_index(key: u64, len: usize) -> usize {
    (key >> 1) as usize & (len - 1)
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

    #[test]
    fn the_window_grows_with_its_samples_and_never_past_its_size() {
        let mut window = SampleWindow::new(2048);
        assert_eq!(window.ring.capacity(), 0);
        let sample = |isn| Sample {
            isn,
            ts_ns: 0,
            syncookie: false,
        };
        for isn in 0..5 {
            window.push(sample(isn));
        }
        assert_eq!(window.ring.capacity(), 8);
        for isn in 5..3000 {
            window.push(sample(isn));
        }
        assert_eq!(window.ring.capacity(), 2048);
        assert_eq!(window.in_order().first().map(|s| s.isn), Some(3000 - 2048));
    }

    fn observation(client_port: u16, peer_isn: u32) -> IsnObservation {
        IsnObservation {
            isn: u32::from(client_port) << 8,
            ts_ns: u64::from(client_port),
            server: "192.0.2.1:443".parse().unwrap(),
            client: SocketAddr::from(([198, 51, 100, 7], client_port)),
            peer_isn,
            options: Default::default(),
            syncookies: false,
        }
    }

    #[test]
    fn the_tuple_table_grows_to_twice_the_window_and_keeps_what_it_held() {
        let mut table = TupleTable::new(2048);
        assert_eq!(table.slots.len(), INITIAL_TUPLE_SLOTS);
        for port in 0..8 {
            assert!(matches!(
                table.classify(&observation(port, 1)),
                TupleVerdict::New
            ));
        }
        let held = |table: &TupleTable| -> Vec<u64> {
            let mut keys: Vec<u64> = table
                .slots
                .iter()
                .map(|s| s.key)
                .filter(|&k| k != 0)
                .collect();
            keys.sort_unstable();
            keys
        };
        let before = held(&table);
        assert_eq!(before.len(), table.occupied);
        table.grow();
        assert_eq!(table.slots.len(), 2 * INITIAL_TUPLE_SLOTS);
        assert_eq!(held(&table), before, "every tuple kept");
        for (index, slot) in table.slots.iter().enumerate() {
            assert!(slot.key == 0 || slot_index(slot.key, table.slots.len()) == index);
        }
        let key =
            |obs: &IsnObservation| tuple_key(server_half(&obs.server), &obs.server, &obs.client);
        let held_tuples: Vec<IsnObservation> = (0..8)
            .map(|port| observation(port, 1))
            .filter(|obs| before.contains(&key(obs)))
            .collect();
        assert_eq!(held_tuples.len(), before.len());
        for obs in &held_tuples {
            let verdict = table.classify(obs);
            assert!(
                matches!(verdict, TupleVerdict::Retransmit),
                "found where it now is"
            );
        }
        for port in 0..20_000 {
            table.classify(&observation(port, 2));
        }
        assert_eq!(table.slots.len(), 4096, "2 × the window, and no more");
    }
}
