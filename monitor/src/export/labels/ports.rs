//! The `port` label of the listener metrics and the other namespaces' TCP events: a port
//! keeps its own while it listens, at most [`MAX_PORTS`] of them (or a cap of the caller's);
//! later ones are [`OTHER`].

use std::collections::{BTreeMap, BTreeSet};

/// Listening ports with their own `port` label; beyond it: `other`.
pub const MAX_PORTS: usize = 32;
/// The label of everything beyond a cap.
pub const OTHER: &str = "other";

/// Port labels under a cap ([`MAX_PORTS`] by default): a port keeps its label while it
/// listens.
pub struct PortLabels {
    labelled: BTreeSet<u16>,
    max: usize,
}

impl Default for PortLabels {
    fn default() -> Self {
        PortLabels::at_most(MAX_PORTS)
    }
}

impl PortLabels {
    pub fn at_most(max: usize) -> Self {
        PortLabels {
            labelled: BTreeSet::new(),
            max,
        }
    }

    /// Forgets ports that stopped listening; returns them.
    pub fn retain<V>(&mut self, listening: &BTreeMap<u16, V>) -> Vec<u16> {
        let gone: Vec<u16> = self
            .labelled
            .iter()
            .copied()
            .filter(|port| !listening.contains_key(port))
            .collect();
        for port in &gone {
            self.labelled.remove(port);
        }
        gone
    }

    /// The ports with a label of their own.
    pub fn labelled(&self) -> impl Iterator<Item = u16> + '_ {
        self.labelled.iter().copied()
    }

    pub fn label(&mut self, port: u16) -> String {
        if self.labelled.contains(&port) || self.labelled.len() < self.max {
            self.labelled.insert(port);
            port.to_string()
        } else {
            OTHER.to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_labels_are_capped_and_freed_when_a_port_stops_listening() {
        let mut labels = PortLabels::default();
        let mut listening = BTreeMap::new();
        for port in 0..MAX_PORTS as u16 {
            assert_eq!(labels.label(port), port.to_string());
            listening.insert(port, ());
        }
        assert_eq!(labels.label(9999), OTHER);
        listening.remove(&0);
        assert_eq!(labels.retain(&listening), [0]);
        assert_eq!(labels.label(9999), "9999");
    }
}
