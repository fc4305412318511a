//! Bounded per-service state: the sample ring, each sample with its 4-tuple, and an index of
//! those 4-tuples, used to drop retransmitted SYN-ACKs and to collect same-4-tuple reuses for
//! the clock check. The index holds exactly the 4-tuples of the samples in the window, so a
//! retransmission of a sample still in the window is always recognised, however many other
//! 4-tuples came between: a SYN flood's retransmitted SYN-ACKs never enter the window as
//! repeats. Both grow with the samples up to the window, so a service seen a few times costs a
//! few hundred bytes, not the full window's.

use std::{
    hash::{BuildHasher as _, RandomState},
    net::SocketAddr,
};

use hashbrown::HashTable;

use super::IsnObservation;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub isn: u32,
    pub ts_ns: u64,
    pub syncookie: bool,
}

/// Two SYN-ACKs on the same 4-tuple: how far the ISN moved and how much time passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReusePair {
    pub isn_advance: u32,
    pub elapsed_ns: u64,
}

pub enum TupleVerdict {
    /// No sample in the window has this 4-tuple: scored.
    New,
    /// Same 4-tuple and same client ISN: a retransmission of a SYN-ACK already counted.
    Retransmit,
    /// Same 4-tuple, new client ISN: a new connection reusing the tuple.
    Reused,
}

/// A sample and the latest SYN-ACK of its 4-tuple.
#[derive(Clone, Copy)]
struct Slot {
    sample: Sample,
    tuple: u64,
    peer_isn: u32,
    latest_isn: u32,
    latest_ts_ns: u64,
}

const REUSE_PAIRS_KEPT: usize = 256;

/// The last `capacity` samples, oldest overwritten first; memory grows with the samples.
pub struct SampleWindow {
    ring: Vec<Slot>,
    capacity: usize,
    next: usize,
    /// Ring positions by their 4-tuple's key: one per sample, none for a 4-tuple not in the ring.
    positions: HashTable<u32>,
    /// Keys the 4-tuples' hash, which an attacker choosing client addresses and ports must not
    /// be able to make collide.
    tuple_hasher: RandomState,
    reuses: Vec<ReusePair>,
    next_reuse: usize,
}

impl SampleWindow {
    pub fn new(capacity: usize) -> Self {
        Self {
            ring: Vec::new(),
            capacity,
            next: 0,
            positions: HashTable::new(),
            tuple_hasher: RandomState::new(),
            reuses: Vec::new(),
            next_reuse: 0,
        }
    }

    /// Scores `obs` unless its 4-tuple has a sample in the window: then it is a retransmission
    /// (same client ISN) or a reuse of the 4-tuple (a new one), and is not scored.
    pub fn ingest(&mut self, obs: &IsnObservation) -> TupleVerdict {
        // A service's SYN-ACKs all come from one server: its client tells 4-tuples apart.
        let tuple = self.tuple_hasher.hash_one(client_bits(&obs.client));
        let ring = &self.ring;
        if let Some(&position) = self
            .positions
            .find(tuple, |&p| ring[p as usize].tuple == tuple)
        {
            return self.seen_again(position as usize, obs);
        }
        self.push(Slot {
            sample: Sample {
                isn: obs.isn,
                ts_ns: obs.ts_ns,
                syncookie: obs.syncookies,
            },
            tuple,
            peer_isn: obs.peer_isn,
            latest_isn: obs.isn,
            latest_ts_ns: obs.ts_ns,
        });
        TupleVerdict::New
    }

    fn seen_again(&mut self, position: usize, obs: &IsnObservation) -> TupleVerdict {
        let slot = &mut self.ring[position];
        if slot.peer_isn == obs.peer_isn {
            return TupleVerdict::Retransmit;
        }
        let pair = ReusePair {
            isn_advance: obs.isn.wrapping_sub(slot.latest_isn),
            elapsed_ns: obs.ts_ns.saturating_sub(slot.latest_ts_ns),
        };
        slot.peer_isn = obs.peer_isn;
        slot.latest_isn = obs.isn;
        slot.latest_ts_ns = obs.ts_ns;
        self.record_reuse(pair);
        TupleVerdict::Reused
    }

    fn push(&mut self, slot: Slot) {
        let position = self.next;
        if self.ring.len() < self.capacity {
            if self.ring.len() == self.ring.capacity() {
                // Doubling, but never past the window.
                let more = self.ring.len().max(4).min(self.capacity - self.ring.len());
                self.ring.reserve_exact(more);
            }
            self.ring.push(slot);
            if self.ring.len() == self.capacity {
                // Room for twice the window: the index can then always be rebuilt in place
                // (tombstones of removed positions), so a full window never allocates again.
                let ring = &self.ring;
                let room = 2 * self.capacity - self.positions.len();
                self.positions.reserve(room, |&p| ring[p as usize].tuple);
            }
        } else {
            let evicted = self.ring[position].tuple;
            if let Ok(entry) = self
                .positions
                .find_entry(evicted, |&p| p as usize == position)
            {
                entry.remove();
            }
            self.ring[position] = slot;
        }
        let ring = &self.ring;
        self.positions
            .insert_unique(slot.tuple, position as u32, |&p| ring[p as usize].tuple);
        self.next = (position + 1) % self.capacity;
    }

    /// The samples, oldest first.
    pub fn in_order(&self) -> Vec<Sample> {
        // Until the ring is full, `next` is its length and `older` is empty.
        let (newer, older) = self.ring.split_at(self.next);
        older.iter().chain(newer).map(|slot| slot.sample).collect()
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

/// A client address and port as two numbers: cheaper to hash than `SocketAddr` field by field.
fn client_bits(client: &SocketAddr) -> (u128, u16) {
    let address = match client {
        SocketAddr::V4(v4) => u128::from(v4.ip().to_bits()) | 1 << 127,
        SocketAddr::V6(v6) => v6.ip().to_bits(),
    };
    (address, client.port())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn isns(window: &SampleWindow) -> Vec<u32> {
        window.in_order().iter().map(|s| s.isn).collect()
    }

    #[test]
    fn window_keeps_the_newest_in_order() {
        let mut window = SampleWindow::new(3);
        for port in 0..5 {
            window.ingest(&observation(port, 1));
        }
        assert_eq!(isns(&window), [2 << 8, 3 << 8, 4 << 8]);
    }

    #[test]
    fn the_window_grows_with_its_samples_and_never_past_its_size() {
        let mut window = SampleWindow::new(2048);
        assert_eq!(window.ring.capacity(), 0);
        for port in 0..5 {
            window.ingest(&observation(port, 1));
        }
        assert_eq!(window.ring.capacity(), 8);
        for port in 5..3000 {
            window.ingest(&observation(port, 1));
        }
        assert_eq!(window.ring.capacity(), 2048);
        assert_eq!(window.positions.len(), 2048, "one 4-tuple per sample");
        assert_eq!(isns(&window).first(), Some(&((3000 - 2048) << 8)));
    }

    /// A flood of other 4-tuples between a SYN-ACK and its retransmission (a direct-mapped
    /// table of twice the window lost a quarter of them here, which then counted as repeats).
    #[test]
    fn a_retransmit_is_dropped_while_its_sample_is_in_the_window() {
        const WINDOW: u16 = 2048;
        let mut window = SampleWindow::new(WINDOW.into());
        for port in 0..WINDOW {
            assert!(matches!(
                window.ingest(&observation(port, 1)),
                TupleVerdict::New
            ));
        }
        for port in 0..WINDOW {
            assert!(matches!(
                window.ingest(&observation(port, 1)),
                TupleVerdict::Retransmit
            ));
        }
        // A new 4-tuple takes the oldest sample's place (port 0's): port 0's next SYN-ACK is
        // scored, as no copy of it is left, and takes the next oldest's place (port 1's).
        window.ingest(&observation(WINDOW, 1));
        assert!(matches!(
            window.ingest(&observation(0, 1)),
            TupleVerdict::New
        ));
        assert!(matches!(
            window.ingest(&observation(2, 1)),
            TupleVerdict::Retransmit
        ));
        assert!(matches!(
            window.ingest(&observation(1, 1)),
            TupleVerdict::New
        ));
        assert_eq!(window.positions.len(), usize::from(WINDOW));
        let mut held = isns(&window);
        held.sort_unstable();
        held.dedup();
        assert_eq!(held.len(), usize::from(WINDOW), "no ISN twice");
    }

    #[test]
    fn a_reused_4_tuple_is_timed_from_its_latest_synack_and_its_retransmits_dropped() {
        let mut window = SampleWindow::new(16);
        let first = observation(7, 1);
        window.ingest(&first);
        let reuse = |peer_isn: u32, step: u32| IsnObservation {
            isn: first.isn + step * 1000,
            ts_ns: first.ts_ns + u64::from(step) * 2_000_000,
            peer_isn,
            ..first
        };
        assert!(matches!(window.ingest(&reuse(2, 1)), TupleVerdict::Reused));
        assert!(matches!(
            window.ingest(&reuse(2, 1)),
            TupleVerdict::Retransmit
        ));
        assert!(matches!(window.ingest(&reuse(3, 2)), TupleVerdict::Reused));
        let pair = ReusePair {
            isn_advance: 1000,
            elapsed_ns: 2_000_000,
        };
        assert_eq!(window.reuse_pairs(), [pair, pair]);
        assert_eq!(isns(&window), [first.isn], "reuses are not scored");
    }
}
