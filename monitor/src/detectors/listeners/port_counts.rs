//! Per listening port: SYNs received, SYN-ACKs sent and handshakes completed, from the kernel
//! programs' counters (see `seqwatch_common::listener_counts`). The kernel counts only the
//! ports given a slot here: at each read of the socket table, each listening port with a
//! `port` label of its own (at most [`MAX_PORTS`]) gets a slot of its own, and every other
//! listening port shares [`SHARED_SLOT`], whose counts go to `other`. A port is counted from
//! the first read of the socket table that shows it listening; its series appear then, at 0.
//!
//! Slots are reused without being zeroed: a slot's counters only grow, and a port gains its
//! slot's increase since the last read. A port that stopped listening loses its slot number at
//! once, but its slot is read for it one last time, and handed on, only at the next read: by
//! then no program that looked the port up before is still running, so no increment is lost
//! or given to the wrong port.
//!
//! A port's own series is all its own slots counted for it since the daemon started: it never
//! decreases, also when the port stops listening (its series goes) and listens again (it comes
//! back). Which counters exist depends on what is attached: SYNs need the ingress classifier,
//! SYN-ACKs the egress one, completions the `inet_sock_set_state` tracepoint.

use std::collections::{BTreeMap, HashMap};

use aya::maps::{Array, MapData, PerCpuArray};
use prometheus::IntCounterVec;
use seqwatch_common::listener_counts::{PortCounts, SLOTS, slot_word, with_slot};
use serde::Serialize;

use crate::export::labels::ports::{MAX_PORTS, OTHER};
use crate::export::metrics::Registry;

/// Slots 1..=`OWN_SLOTS` are each one labelled port's. A slot rests for one read after its
/// port stopped listening, so twice the label cap always leaves one for a new label.
const OWN_SLOTS: u8 = 64;
/// The slot of the listening ports without a label of their own, counted under `other`.
const SHARED_SLOT: u8 = OWN_SLOTS + 1;
const _: () = assert!(OWN_SLOTS as usize >= 2 * MAX_PORTS && SHARED_SLOT as u32 + 1 == SLOTS);

/// The per-port counters, registered with the daemon's registry.
#[derive(Clone)]
pub struct PortCountMetrics {
    syns_received: IntCounterVec,
    synacks_sent: IntCounterVec,
    handshakes_completed: IntCounterVec,
}

impl PortCountMetrics {
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let counters = |name: &str, help: &str| registry.counters(name, help, &["port"]);
        Ok(PortCountMetrics {
            syns_received: counters(
                "seqwatch_listener_syns_received_total",
                "SYNs that arrived for the listening port on the monitored interfaces (ingress \
                 classifier: --direction ingress or both), retransmitted SYNs included.",
            )?,
            synacks_sent: counters(
                "seqwatch_listener_synacks_sent_total",
                "SYN-ACKs the listening port sent on the monitored interfaces (egress \
                 classifier), retransmitted SYN-ACKs included.",
            )?,
            handshakes_completed: counters(
                "seqwatch_listener_handshakes_completed_total",
                "Connections to the listening port that completed their handshake (SYN_RECV \
                 to ESTABLISHED, from the sock:inet_sock_set_state tracepoint).",
            )?,
        })
    }

    /// Removes a port's series when it stops listening.
    pub fn remove(&self, label: &str) {
        for vec in self.all() {
            let _ = vec.remove_label_values(&[label]);
        }
    }

    fn all(&self) -> [&IntCounterVec; 3] {
        [
            &self.syns_received,
            &self.synacks_sent,
            &self.handshakes_completed,
        ]
    }
}

/// Which counters the attached programs can see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sources {
    pub syns_received: bool,
    pub synacks_sent: bool,
    pub handshakes_completed: bool,
}

impl Sources {
    /// In the order of [`PortCountMetrics::all`].
    fn exported(&self) -> [bool; 3] {
        [
            self.syns_received,
            self.synacks_sent,
            self.handshakes_completed,
        ]
    }

    fn report(&self, kernel: PortCounts) -> HandshakeReport {
        HandshakeReport {
            syns_received: self.syns_received.then_some(kernel.syns_received),
            synacks_sent: self.synacks_sent.then_some(kernel.synacks_sent),
            handshakes_completed: self
                .handshakes_completed
                .then_some(kernel.handshakes_completed),
        }
    }

    /// Says once which counters are off and why.
    pub fn log_missing(&self) {
        if !self.syns_received {
            log::info!(
                "seqwatch_listener_syns_received_total off: SYNs are seen on ingress only \
                 (--direction ingress or both)"
            );
        }
        if !self.synacks_sent {
            log::info!(
                "seqwatch_listener_synacks_sent_total off: SYN-ACKs are seen on egress only \
                 (--direction egress or both)"
            );
        }
        if !self.handshakes_completed {
            log::info!(
                "seqwatch_listener_handshakes_completed_total off: the inet_sock_set_state \
                 tracepoint is not attached"
            );
        }
    }
}

/// A listening port's counters in `/api/v1/owners`: since the daemon started, `null` where the
/// source is not attached or the port has no label of its own (it is counted under `other`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HandshakeReport {
    pub syns_received: Option<u64>,
    pub synacks_sent: Option<u64>,
    pub handshakes_completed: Option<u64>,
}

/// The kernel's slot numbers and counters, and what each port has been counted.
pub struct PortCounters {
    port_slots: Array<MapData, u64>,
    kernel: PerCpuArray<MapData, PortCounts>,
    sources: Sources,
    slots: Slots,
    /// Each slot's counters (summed over the CPUs) at its last read.
    last_read: [PortCounts; SLOTS as usize],
    /// Per port that has had a slot of its own: everything counted for it. At most one entry
    /// per local port, and only ports that listened here: never an attacker's choice.
    totals: HashMap<u16, PortCounts>,
}

impl PortCounters {
    pub fn new(
        (port_slots, kernel): (Array<MapData, u64>, PerCpuArray<MapData, PortCounts>),
        sources: Sources,
    ) -> Self {
        sources.log_missing();
        PortCounters {
            port_slots,
            kernel,
            sources,
            slots: Slots::default(),
            last_read: [PortCounts::default(); SLOTS as usize],
            totals: HashMap::new(),
        }
    }

    /// Gives the listening ports their slots (`true`: the port has its own label), reads the
    /// slots and publishes the counts: under each labelled port, and the shared slot's under
    /// `other`. Returns the labelled ports' counts since the daemon started, for
    /// `/api/v1/owners`.
    pub fn update(
        &mut self,
        listening: &BTreeMap<u16, bool>,
        metrics: &PortCountMetrics,
    ) -> HashMap<u16, HandshakeReport> {
        let update = self.slots.update(listening);
        // Before any port is given one of these slots again.
        for (slot, port) in update.drained {
            let gained = self.read_increase(slot);
            let total = self.totals.entry(port).or_default();
            *total = total.plus(gained);
        }
        for (port, slot) in update.writes {
            if let Err(err) = self.write_slot(port, slot) {
                log::warn!("giving port {port} counter slot {slot}: {err}");
            }
        }
        let mut reports = HashMap::new();
        for (port, slot) in self.slots.own() {
            let gained = self.read_increase(slot);
            let total = self.totals.entry(port).or_default();
            *total = total.plus(gained);
            let total = *total;
            self.publish(&port.to_string(), total, true, metrics);
            reports.insert(port, self.sources.report(total));
        }
        if self.slots.shares() {
            let gained = self.read_increase(SHARED_SLOT);
            self.publish(OTHER, gained, false, metrics);
        }
        reports
    }

    /// Adds `values` to the label's exported series, or (`raise`) raises them to `values`.
    fn publish(&self, label: &str, values: PortCounts, raise: bool, metrics: &PortCountMetrics) {
        let series = metrics.all().into_iter().zip(self.sources.exported());
        for ((vec, exported), value) in series.zip(fields(values)) {
            if !exported {
                continue;
            }
            let counter = vec.with_label_values(&[label]);
            let increase = if raise {
                value.saturating_sub(counter.get())
            } else {
                value
            };
            counter.inc_by(increase);
        }
    }

    /// What the slot counted (over all CPUs) since its last read.
    fn read_increase(&mut self, slot: u8) -> PortCounts {
        let Ok(per_cpu) = self.kernel.get(&u32::from(slot), 0) else {
            return PortCounts::default();
        };
        let now = per_cpu
            .iter()
            .fold(PortCounts::default(), |sum, cpu| sum.plus(*cpu));
        let last = std::mem::replace(&mut self.last_read[usize::from(slot)], now);
        now.since(last)
    }

    /// Sets the port's byte of its word in the kernel's slot numbers (only this task writes
    /// them; the programs read a whole word, which holds the old or the new number).
    fn write_slot(&mut self, port: u16, slot: u8) -> Result<(), aya::maps::MapError> {
        let index = slot_word(port);
        let word = self.port_slots.get(&index, 0)?;
        self.port_slots.set(index, &with_slot(word, port, slot), 0)
    }
}

fn fields(counts: PortCounts) -> [u64; 3] {
    [
        counts.syns_received,
        counts.synacks_sent,
        counts.handshakes_completed,
    ]
}

/// Which port has which slot; what changes at each read of the socket table.
struct Slots {
    /// Every listening port's slot (its own or [`SHARED_SLOT`]), as the kernel has it.
    of_port: BTreeMap<u16, u8>,
    /// Own slots taken from their port at the last update, with that port.
    resting: Vec<(u8, u16)>,
    free: Vec<u8>,
}

impl Default for Slots {
    fn default() -> Self {
        Slots {
            of_port: BTreeMap::new(),
            resting: Vec::new(),
            free: (1..=OWN_SLOTS).rev().collect(),
        }
    }
}

/// What one update of the slots asks of the kernel's maps, in this order.
#[derive(Debug, PartialEq, Eq)]
struct SlotUpdate {
    /// Slots to read one last time for the port they had (they are free after).
    drained: Vec<(u8, u16)>,
    /// Slot numbers to write (0: not counted).
    writes: Vec<(u16, u8)>,
}

impl Slots {
    /// The slots for one read of the socket table: `listening` has each listening port, `true`
    /// if it has a label of its own.
    fn update(&mut self, listening: &BTreeMap<u16, bool>) -> SlotUpdate {
        let drained = std::mem::take(&mut self.resting);
        self.free.extend(drained.iter().map(|(slot, _)| *slot));
        let mut writes = Vec::new();
        self.of_port.retain(|&port, &mut slot| {
            let keep = listening
                .get(&port)
                .is_some_and(|&own| own == (slot != SHARED_SLOT));
            if !keep {
                if slot != SHARED_SLOT {
                    self.resting.push((slot, port));
                }
                writes.push((port, 0));
            }
            keep
        });
        for (&port, &own) in listening {
            if !self.of_port.contains_key(&port) {
                // Never short of slots (see OWN_SLOTS); if it were, counted under `other`.
                let slot = own.then(|| self.free.pop()).flatten();
                let slot = slot.unwrap_or(SHARED_SLOT);
                self.of_port.insert(port, slot);
                writes.push((port, slot));
            }
        }
        SlotUpdate { drained, writes }
    }

    /// The ports with a slot of their own, and their slots.
    fn own(&self) -> Vec<(u16, u8)> {
        self.of_port
            .iter()
            .filter(|(_, slot)| **slot != SHARED_SLOT)
            .map(|(port, slot)| (*port, *slot))
            .collect()
    }

    fn shares(&self) -> bool {
        self.of_port.values().any(|slot| *slot == SHARED_SLOT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listening(ports: &[(u16, bool)]) -> BTreeMap<u16, bool> {
        ports.iter().copied().collect()
    }

    #[test]
    fn a_slot_rests_one_update_after_its_port_stops_listening_and_is_read_for_it() {
        let mut slots = Slots::default();
        let update = slots.update(&listening(&[(80, true), (443, true), (9000, false)]));
        assert_eq!(update.drained, []);
        assert_eq!(update.writes, [(80, 1), (443, 2), (9000, SHARED_SLOT)]);
        assert_eq!(slots.own(), [(80, 1), (443, 2)]);
        assert!(slots.shares());

        // 80 stops, 8080 starts: 80's slot is unmapped now and not yet given to 8080.
        let update = slots.update(&listening(&[(443, true), (8080, true)]));
        assert_eq!(update.drained, []);
        assert_eq!(update.writes, [(80, 0), (9000, 0), (8080, 3)]);
        assert!(!slots.shares());
        // Next update: slot 1 is read for 80 one last time, then free for the next port.
        let update = slots.update(&listening(&[(443, true), (8080, true), (22, true)]));
        assert_eq!(update.drained, [(1, 80)]);
        assert_eq!(update.writes, [(22, 1)]);
        assert_eq!(slots.update(&listening(&[])).writes.len(), 3);
    }

    #[test]
    fn every_labelled_port_gets_a_slot_of_its_own_even_when_all_labels_change_every_update() {
        let mut slots = Slots::default();
        for round in 0..4u16 {
            let ports = (0..MAX_PORTS as u16).map(|n| (round * 1000 + n, true));
            slots.update(&ports.collect());
            assert_eq!(slots.own().len(), MAX_PORTS, "round {round}");
            assert!(!slots.shares());
        }
    }

    #[test]
    fn a_port_that_gets_its_label_leaves_the_shared_slot() {
        let mut slots = Slots::default();
        slots.update(&listening(&[(80, false)]));
        let update = slots.update(&listening(&[(80, true)]));
        assert_eq!(update.writes, [(80, 0), (80, 1)]);
        assert_eq!(slots.own(), [(80, 1)]);
    }
}
